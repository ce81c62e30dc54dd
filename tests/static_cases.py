"""The cases of ``moe.dispatch_shape: static`` both backends' tests run: each against the same layer with
dynamic dispatch. ``capacity.factor`` 1.0 drops copies (the drops must be the same ones); factor 8 (= E/k·2)
admits every copy (the outputs must be the same); the quantile bound sizes its buffer by ``bucket``."""

from tests.moe_cases_common import case

STATIC = ("moe.dispatch_shape=static",)
STATIC_CASES = [
    case(kind="locmoe", mode="factor", extra=STATIC),  # some copies dropped
    case(kind="gshard", mode="factor", extra=(*STATIC, "moe.capacity.factor=8.0")),  # nothing dropped
    case(kind="locmoe", mode="bound", extra=(*STATIC, "moe.capacity.bound_rule=quantile", "moe.capacity.bucket=8")),
    case(kind="locmoe", mode="factor", dispatch="flat", extra=STATIC),
]


def dynamic_twin(c: dict) -> dict:
    """The same case with dynamic dispatch."""
    return dict(c, extra=tuple(e for e in c["extra"] if e not in STATIC))
