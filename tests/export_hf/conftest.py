"""A tiny trained checkpoint (configs/tiny_cpu.yaml, LocMoE router with GrAP, a few steps) with its router
export, and its Hugging Face export."""

import pytest

from locmoe.export import export_checkpoint
from locmoe.export.hf_export import export_hf
from tests.training.runs import train


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_run")
    train(out, "train.steps=3", "train.warmup_steps=1")
    export_checkpoint(out, out / "router")
    return out


@pytest.fixture(scope="session")
def hf_dir(trained, tmp_path_factory):
    return export_hf(trained, tmp_path_factory.mktemp("hf") / "model")
