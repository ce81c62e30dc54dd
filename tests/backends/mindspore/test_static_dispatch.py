"""``moe.dispatch_shape: static`` in the MindSpore layer equals dynamic dispatch in one process: the same
outputs and gradients (fp32, 1e-5: the batched GEMM over padded slots adds the same products per row) and the
same kept copies, with and without drops. The cases are the torch test's (``tests/static_cases.py``); the
expert-parallel runs of static dispatch are in ``tests/training/test_train_mindspore_compiled.py``."""

from tests.backends import shared_moe_checks as checks
from tests.backends.mindspore import moe_cases as mc

test_static_equals_dynamic_in_one_process, test_the_cases_cover_drops_and_no_drops = checks.static_one_process_tests(
    mc.single_process_reference
)
