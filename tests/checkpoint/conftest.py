import pytest

from tests.checkpoint.tiny import tiny_train


@pytest.fixture(scope="session")
def run4(tmp_path_factory):
    """4 steps, checkpoints at steps 2 and 4, the routers exported at the end (``run4/router``)."""
    out = tmp_path_factory.mktemp("ckpt_run") / "run"
    tiny_train(out, "train.steps=4", "export.at_end=true")
    return out
