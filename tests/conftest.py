"""Suite-wide: the runs several test files share, and the order pytest-xdist deals the files in.

``scripts/test.sh`` runs the suite on 2 pytest-xdist workers with ``--dist loadfile``: a whole file to a
worker (a file's module fixtures, often a multi-process launch, run once), and a whole folder for the folders
whose files share session fixtures. Workers take the next file as they free up, in collection order, so the
files that take longest go first: a 10-minute file dealt last would run alone while the other worker idles.
"""

from __future__ import annotations

import functools
import os
import sys

import pytest

from tests import machine_share
from tests.training import shared_runs

# Longest first, from --durations of the full runs on the 2-core machine (each holds tests of a minute or more:
# multi-process launches, a fresh venv, the README's commands); every other file follows in pytest's order. A
# folder in SHARED_FIXTURE_DIRS goes where its first file is listed.
SLOWEST_FILES = (
    "tests/backends/mindspore/test_sharded_adamw.py",
    "tests/training/test_sharded_training.py",
    "tests/training/test_fast_path.py",
    "tests/training/test_train_mindspore_compiled.py",
    "tests/training/test_train_mindspore.py",
    "tests/training/test_train_torch.py",
    "tests/test_readme_examples.py",
    "tests/reliability/test_hangs.py",
    "tests/test_packaging.py",
    "tests/backends/mindspore/test_moe_distributed.py",
    "tests/inference/test_serving.py",
    "tests/training/test_sequence_placement.py",
    "tests/test_bench_scripts.py",
    "tests/checkpoint/test_safe_loading.py",
    "tests/training/test_interrupts.py",
)


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """``shared_run(*overrides, nproc=1, launcher="torchrun") -> out_dir``: a run no test writes into,
    trained once per session (``tests/training/shared_runs.py``)."""
    return functools.partial(shared_runs.shared_run, shared_runs.session_root(tmp_path_factory))


# whole folders to one worker: their files share session fixtures (a trained run each), trained once that way
SHARED_FIXTURE_DIRS = ("tests/checkpoint/", "tests/export_hf/", "tests/inference/")


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook, on the controller
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile``: a file to a worker, but each folder above as one unit."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileOrFolderScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::")[0]
            return next((d for d in SHARED_FIXTURE_DIRS if path.startswith(d)), path)

    return FileOrFolderScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Under xdist only (a plain run keeps pytest's order): the slowest files first, stably."""
    if hasattr(config, "workerinput"):
        rank = {path: i for i, path in enumerate(SLOWEST_FILES)}
        items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def pytest_configure(config):
    """On a pytest-xdist worker: the lock files the workers share the machine by (``tests/machine_share.py``),
    and one thread for its own tests."""
    if hasattr(config, "workerinput"):
        machine_share.configure(config.workerinput["testrunuid"])
        # one thread per worker: 2 workers on 2 cores (OpenMP's waiting threads spin when oversubscribed)
        os.environ["OMP_NUM_THREADS"] = "1"
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """On the xdist controller: the run's id, to remove the workers' lock files when the session ends."""
    node.config.stash[_RUN_ID] = node.workerinput["testrunuid"]


def pytest_sessionfinish(session):
    run_id = session.config.stash.get(_RUN_ID, None)
    if run_id is not None and not hasattr(session.config, "workerinput"):
        machine_share.remove_lock_files(run_id)


_RUN_ID = pytest.StashKey[str]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Each test (its fixtures' set-up included) beside the other worker's tests, but not beside a launch."""
    with machine_share.shared():
        yield
