"""The backend contract (``locmoe.backend_api``): each backend package is a ``Backend`` by its functions, and
importing the package loads nothing of it, so a submodule of the same name as one of its functions can never
replace that function."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import backends
from locmoe.backend_api import Backend, CheckpointIO, TraceRecorder

ROOT = Path(__file__).resolve().parents[1]


def test_each_backend_keeps_the_contract():
    torch_backend, mindspore_backend = backends.get("torch"), backends.get("mindspore")
    assert isinstance(torch_backend, Backend) and isinstance(mindspore_backend, Backend)
    assert isinstance(torch_backend, TraceRecorder)
    assert isinstance(torch_backend.checkpoint_io(), CheckpointIO)
    assert isinstance(mindspore_backend.checkpoint_io(), CheckpointIO)


def test_a_backend_package_imports_nothing_of_its_own():
    code = (
        "import sys, backends.torch, backends.mindspore; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('backends', 'models', 'torch', 'mindspore')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['backends', 'backends.mindspore', 'backends.torch']"


def test_pretrain_stays_the_entry_after_the_training_module_is_imported():
    import backends.torch.train  # noqa: F401  binds the submodule `train` as an attribute of the package

    assert backends.get("torch").pretrain.__module__ == "backends.torch"


def test_serving_goes_through_the_server_and_mindspore_refuses_it():
    from locmoe.backend_api import Server, Serving
    from locmoe.inference.errors import InferenceError

    torch_backend, mindspore_backend = backends.get("torch"), backends.get("mindspore")
    assert isinstance(torch_backend, Serving) and isinstance(torch_backend.server(), Server)
    with pytest.raises(InferenceError, match="the MindSpore backend has no serving"):
        mindspore_backend.server()
