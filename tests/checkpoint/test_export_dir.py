"""``locmoe export RUN OUT`` never removes what it did not write (issue 18): a non-empty foreign OUT, the run
directory itself and ``export.dir == train.out_dir`` are refused, naming the directory; a previous export is
replaced. A corrupt newest checkpoint given by its run directory stops the command, naming both checkpoints."""

import json
from pathlib import Path

import pytest

from locmoe.atomic_io import WriteError
from locmoe.checkpoint.directory import CheckpointError, list_checkpoints, step_dir
from locmoe.config import ConfigError, load_config
from locmoe.export import export_checkpoint, load_router
from locmoe.training.common import check_export_dir
from tests.checkpoint.tiny import copy_run, locmoe, one_error_line
from tests.training.runs import TINY


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_onto_a_foreign_directory_is_refused_and_leaves_it_as_it_was(run4, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(WriteError, match=f"{out} is not empty and is not a previous router export .*thesis.tex"):
        export_checkpoint(step_dir(run4, 4), out)
    assert tree(out) == {"thesis.tex": b"years of work"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left beside it


def test_export_into_the_run_directory_keeps_the_checkpoints(run4, tmp_path):
    """Issue 18's case: ``locmoe export RUN/checkpoints/step_N RUN`` used to leave only the router files."""
    run = copy_run(run4, tmp_path / "run")
    before = tree(run)
    for target in (run, run / "checkpoints", step_dir(run, 4)):
        line = one_error_line(locmoe("export", step_dir(run, 4), target))
        assert str(target) in line
    assert tree(run) == before


def test_a_previous_export_is_replaced(run4, tmp_path):
    out = tmp_path / "router"
    export_checkpoint(step_dir(run4, 2), out)
    assert load_router(out).manifest.source["step"] == 2
    export_checkpoint(step_dir(run4, 4), out)
    assert load_router(out).manifest.source["step"] == 4
    (out / "notes.txt").write_text("mine")  # now it holds something the export did not write
    with pytest.raises(WriteError, match="notes.txt"):
        export_checkpoint(step_dir(run4, 2), out)
    assert (out / "notes.txt").read_text() == "mine" and load_router(out).manifest.source["step"] == 4


def test_export_dir_equal_to_out_dir_is_refused_before_training(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for value in (str(run), str(tmp_path), str(run / "checkpoints"), f"{run}/checkpoints/step_00000002"):
        cfg = load_config(str(TINY), [f"train.out_dir={run}", f"export.dir={value}"])
        with pytest.raises(ConfigError, match="export.dir"):
            check_export_dir(cfg)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match="is not an empty directory or a previous router export"):
        check_export_dir(load_config(str(TINY), [f"train.out_dir={run}", f"export.dir={foreign}"]))
    check_export_dir(load_config(str(TINY), [f"train.out_dir={run}"]))  # out_dir/router: fine


def test_a_corrupt_newest_checkpoint_stops_export_naming_both(run4, tmp_path):
    run = copy_run(run4, tmp_path / "run")
    blob = step_dir(run, 4) / "model.safetensors"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        export_checkpoint(run, tmp_path / "out")
    msg = str(err.value)
    assert "step_00000004" in msg and "does not match its checksum" in msg
    assert f"the newest one that verifies is {step_dir(run, 2)}" in msg
    assert not (tmp_path / "out").exists()
    export_checkpoint(step_dir(run, 2), tmp_path / "out")  # named explicitly, it is used


def test_the_checkpoint_used_is_printed(run4, tmp_path, capsys):
    export_checkpoint(run4, tmp_path / "out")
    assert f"using checkpoint {step_dir(run4, 4)}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "mangle, says",
    [
        (lambda m: [m], "expected a JSON object"),
        (lambda m: dict(m, files=["model.safetensors"]), "'files' must be an object"),
        (lambda m: dict(m, step="4"), "'step' must be a non-negative integer"),
        (lambda m: dict(m, files={"../../etc/passwd": {"bytes": 1, "sha256": "x"}}), "is not allowed"),
        (lambda m: dict(m, step=6), "the manifest says step 6, the directory name step 4"),
    ],
)
def test_a_manifest_of_the_wrong_shape_is_a_clear_error(run4, tmp_path, mangle, says):
    run = copy_run(run4, tmp_path / "run")
    man = step_dir(run, 4) / "manifest.json"
    man.write_text(json.dumps(mangle(json.loads(man.read_text()))))
    with pytest.raises(CheckpointError, match=says):
        export_checkpoint(step_dir(run, 4), tmp_path / "out")


def test_train_state_step_that_disagrees_with_the_directory_is_refused(run4, tmp_path):
    from tests.checkpoint.tiny import rewrite

    run = copy_run(run4, tmp_path / "run")
    ckpt = step_dir(run, 4)
    state = json.loads((ckpt / "train_state.json").read_text())
    rewrite(ckpt, "train_state.json", json.dumps(dict(state, step=3)).encode())
    with pytest.raises(CheckpointError, match="train_state.json says step 3, its manifest step 4"):
        export_checkpoint(ckpt, tmp_path / "out")
    renamed = ckpt.rename(ckpt.with_name("step_00000009"))
    with pytest.raises(CheckpointError, match="directory name step 9"):
        export_checkpoint(renamed, tmp_path / "out")
    assert [s for s, _ in list_checkpoints(run)] == [2, 9]
