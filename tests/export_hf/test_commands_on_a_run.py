"""What the commands write and print on the tiny trained run of this folder's conftest: `convert` (either way)
into a non-empty folder it did not write ends with one line, exit 2, and the folder unchanged (the check
`export` has: locmoe.atomic_io.check_replaceable); `report` keeps a foreign --out; `generate` finds the run's
router by itself and separates the prompts' continuations; `bench prefill` says which mode won."""

import pytest

from locmoe.cli import main
from locmoe.cli.bench import verdicts
from locmoe.cli.generate import SEPARATOR


def foreign(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    return out


@pytest.mark.parametrize(
    "argv",
    [["convert", "{run}", "{out}", "--to", "mindspore"], ["convert", "--from", "hf", "{hf}", "{out}"]],
    ids=["to_mindspore", "from_hf"],
)
def test_convert_refuses_a_folder_it_did_not_write(trained, hf_dir, tmp_path, capsys, argv):
    out = foreign(tmp_path)
    code = main([a.format(run=trained, hf=hf_dir, out=out) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{out} is not empty and is not a previous converted checkpoint (it holds notes.txt)" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_report_refuses_a_foreign_out_and_redraws_its_own(trained, tmp_path, capsys):
    out = foreign(tmp_path)
    assert main(["report", str(trained), "--out", str(out)]) == 2
    assert "is not a previous report" in capsys.readouterr().err and len(list(out.iterdir())) == 1
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "loss.png").write_bytes(b"an earlier report's plot")
    assert main(["report", str(trained), "--out", str(tmp_path / "plots")]) == 0  # its own plots are redrawn
    assert (tmp_path / "plots" / "loss.png").read_bytes().startswith(b"\x89PNG")


def test_generate_reads_the_runs_router_and_separates_prompts(trained, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def main(\nimport numpy as\n")
    assert main(["generate", str(trained), "--prompts", str(prompts), "--max-new-tokens", "3"]) == 0
    text = capsys.readouterr().out
    first, second = text.split(f"\n{SEPARATOR}\n")
    assert first.startswith("def main(") and second.startswith("import numpy as")
    assert main(["generate", str(tmp_path), "--prompts", str(prompts)]) == 2
    assert f"no router export at {tmp_path / 'router'} (the default ROUTER_DIR)" in capsys.readouterr().err


def test_bench_prefill_names_the_winner():
    rows = [
        {"length": 128, "mode": "plain", "tokens_per_s": 100.0},
        {"length": 128, "mode": "pipelined", "tokens_per_s": 125.0},
        {"length": 512, "mode": "plain", "tokens_per_s": 90.0},
    ]
    assert verdicts(rows) == [
        "length 128: pipelined wins, 1.25x plain's tokens/s",
        "length 512: only plain was measured, nothing to compare (a --profile, --chunks > 1 or --mode "
        "chunked|pipelined adds a second mode)",
    ]
