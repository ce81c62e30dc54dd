"""``mindspore.jit``'s trace capture, usable under ``python -m`` and pytest.

MindSpore 2.10 records, for every operator it traces, the file and line of each caller frame through
``inspect.stack()``, which reads source code and fails on a frame that has none (``python -m`` runs through
frozen ``runpy`` frames: ``TypeError: 'NoneType' object is not subscriptable``). The same file and line come
from the frames themselves, without reading any source; that is what ``caller_lines`` returns in its place.
"""

from __future__ import annotations

import re
import sys
from typing import Callable

import mindspore as ms

_SKIPPED = re.compile(r"mindspore/common/.*\.py|mindspore/ops/.*\.py|mindspore/nn/.*\.py")  # as MindSpore skips


def caller_lines() -> tuple[list, list]:
    """(file names, line numbers) of the calling frames, innermost first, MindSpore's own layers left out."""
    names, lines = [], []
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if _SKIPPED.search(name) is None:
            names.append(name)
            lines.append(frame.f_lineno)
        frame = frame.f_back
    return names, lines


def trace(fn: Callable) -> Callable:
    """``mindspore.jit(fn, capture_mode="trace")`` with ``caller_lines`` in place of MindSpore's own."""
    from mindspore.graph import jit_trace

    if hasattr(jit_trace, "_get_caller_lines"):
        jit_trace._get_caller_lines = caller_lines
    return ms.jit(fn, capture_mode="trace")
