"""Full and read-only disks (issue 18): every write of a checkpoint, an export or a trace that fails says why
("disk full", "read-only file system") naming the path, exits 2, and leaves nothing behind — no
``.name.tmp-PID``, no ``.step_N.tmp``, no half export. The faults are injected at the write
(``LOCMOE_FAULT_INJECT=disk_full:PATTERN``) as the kernel would raise them (OSError ENOSPC / EROFS): a small
tmpfs needs root, and chmod does not stop root."""

import os
from pathlib import Path

import pytest

from locmoe.atomic_io import WriteError, atomic_write_bytes, write_error
from locmoe.checkpoint.directory import list_checkpoints, step_dir
from locmoe.export import export_checkpoint, load_router
from tests.checkpoint.tiny import copy_run, locmoe, one_error_line, tiny_train


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name or ".old-" in p.name)


def test_a_write_onto_a_directory_is_refused_without_a_temporary(tmp_path):
    (tmp_path / "target").mkdir()
    with pytest.raises(WriteError, match="target: it is a directory"):
        atomic_write_bytes(tmp_path / "target", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


@pytest.mark.parametrize("fault, says", [("disk_full", "disk full"), ("read_only", "read-only file system")])
def test_a_failed_write_keeps_the_previous_file_and_removes_its_temporary(tmp_path, monkeypatch, fault, says):
    old = tmp_path / "profile.json"
    old.write_text("previous")
    monkeypatch.setenv("LOCMOE_FAULT_INJECT", f"{fault}:*")
    with pytest.raises(WriteError, match=f"cannot write {old}: {says}"):
        atomic_write_bytes(old, b"new")
    with pytest.raises(WriteError, match=says):
        atomic_write_bytes(tmp_path / "made" / "by" / "us.json", b"new")
    assert old.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["profile.json"]


def test_safetensors_io_errors_are_recognised(tmp_path):
    """safetensors (Rust) reports an I/O error only in its message: its errno is read from there."""
    err = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    assert "disk full" in str(write_error(err, tmp_path / "model.safetensors"))


def test_a_read_only_directory(run4, tmp_path, monkeypatch):
    """A real read-only directory; as root (whom chmod does not stop) the kernel's EROFS is injected."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:
        monkeypatch.setenv("LOCMOE_FAULT_INJECT", "read_only:*")
        says = "read-only file system"
    else:
        says = "permission denied"
    try:
        with pytest.raises(WriteError, match=says):
            export_checkpoint(step_dir(run4, 4), ro / "router")
        with pytest.raises(WriteError, match=says):
            atomic_write_bytes(ro / "placement.json", b"{}")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_export_onto_a_full_disk_leaves_nothing(run4, tmp_path):
    out = tmp_path / "deep" / "router"
    line = one_error_line(
        locmoe("export", step_dir(run4, 4), out, env={"LOCMOE_FAULT_INJECT": "disk_full:router.safetensors"})
    )
    assert "disk full" in line and "router.safetensors" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even the parents it made


def test_a_full_disk_on_re_export_keeps_the_previous_export(run4, tmp_path, monkeypatch):
    out = tmp_path / "router"
    export_checkpoint(step_dir(run4, 2), out)
    monkeypatch.setenv("LOCMOE_FAULT_INJECT", "disk_full:manifest.json")
    with pytest.raises(WriteError, match="disk full"):
        export_checkpoint(step_dir(run4, 4), out)
    assert load_router(out).manifest.source["step"] == 2 and leftovers(tmp_path) == []


def test_trace_onto_a_full_disk_leaves_nothing(run4, tmp_path):
    line = one_error_line(
        locmoe(
            "trace",
            step_dir(run4, 4),
            tmp_path / "trace.npz",
            "--tokens",
            "32",
            env={"LOCMOE_FAULT_INJECT": "disk_full:*.npz"},
        )
    )
    assert "disk full" in line and "trace.npz" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "fault, file, says",
    [("disk_full", "model.safetensors", "disk full"), ("read_only", "manifest.json", "read-only file system")],
)
def test_a_checkpoint_onto_a_full_or_read_only_disk_leaves_no_temporary(run4, tmp_path, fault, file, says):
    """Resumed at step 4, the checkpoint of step 6 fails: one message, exit 2, no .step_00000006.tmp, and the
    checkpoints of before untouched."""
    run = copy_run(run4, tmp_path / "run")
    proc = tiny_train(
        run, "train.steps=6", flags=["--resume"], env={"LOCMOE_FAULT_INJECT": f"{fault}:{file}"}, check=False
    )
    line = one_error_line(proc)
    assert says in line and file in line
    assert [s for s, _ in list_checkpoints(run)] == [2, 4] and leftovers(run) == []
    assert not (run / ".lock").exists()
