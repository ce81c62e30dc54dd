"""``moe.dispatch_shape: static`` in the MindSpore layer equals dynamic dispatch in one process: the same
outputs and gradients (fp32, 1e-5: the batched GEMM over padded slots adds the same products per row) and the
same kept copies, with and without drops. The cases are the torch test's (``tests/static_cases.py``); the
expert-parallel runs of static dispatch are in ``tests/training/test_train_mindspore_compiled.py``."""

import pytest

from tests.backends.mindspore import moe_cases as mc
from tests.static_cases import STATIC_CASES, assert_static_equals_dynamic, dropped_fractions


@pytest.mark.parametrize("case", STATIC_CASES, ids=mc.case_name)
def test_static_equals_dynamic_in_one_process(case):
    assert_static_equals_dynamic(mc.single_process_reference, case)


def test_the_cases_cover_drops_and_no_drops():
    dropped = dropped_fractions(mc.single_process_reference)
    assert dropped[0] > 0 and dropped[1] == 0
