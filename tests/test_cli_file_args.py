"""Every file argument of every ``locmoe`` subcommand, given a binary file, a non-UTF-8 text file or a JSON
value of the wrong type: exit code 2, one line on stderr naming the flag or the file, no traceback, nothing
written. The CLI runs in this process (``locmoe.cli.main``): an exception that escapes it is the traceback a
user would see, and fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from locmoe.cli import COMMANDS, main
from tests.checkpoint.tiny import train_argv

BAD_FILES = {
    "binary": bytes(range(256)) * 4,  # NUL bytes, and 0x80 where UTF-8 needs a lead byte
    "latin1": "prompt: café, naïve\n".encode("latin-1"),
    "json_scalar": b"5\n",  # valid UTF-8 and valid JSON, but not the object a profile is
}

TEXT_ARGUMENTS = {"--prompts", "SOURCE"}  # where a file holding "5" is valid input (a prompt, a document)

# (what, argv): F is the bad file; RUN, ROUTER, PROMPTS, TRACE, OUT are filled in by the fixture.
FILE_ARGUMENTS = [
    ("train JOB", ["train", "F"]),
    ("train --with", ["train", "tiny_cpu", "--with", "F"]),
    ("configs NAME", ["configs", "F"]),
    ("export CHECKPOINT", ["export", "F", "OUT/export"]),
    ("convert CHECKPOINT", ["convert", "F", "OUT/converted", "--to", "mindspore"]),
    ("trace CHECKPOINT", ["trace", "F", "OUT/trace.npz"]),
    ("plan affinity TRACE", ["plan", "affinity", "F"]),
    ("plan affinity --expect", ["plan", "affinity", "TRACE", "--expect", "F"]),
    ("plan place TRACE", ["plan", "place", "F", "--devices", "2", "--out", "OUT/p.json"]),
    ("plan replicate TRACE", ["plan", "replicate", "F", "--devices", "2", "--out", "OUT/p.json"]),
    ("plan replicate --base", ["plan", "replicate", "TRACE", "--devices", "2", "--base", "F", "--out", "OUT/p.json"]),
    ("plan deploy --profile", ["plan", "deploy", "--profile", "F", "--requests", "5"]),
    ("plan simulate --calibration", ["plan", "simulate", "--calibration", "F"]),
    ("plan simulate --stats", ["plan", "simulate", "--stats", "F"]),
    ("generate CHECKPOINT", ["generate", "F", "ROUTER", "--prompts", "PROMPTS"]),
    ("generate ROUTER", ["generate", "RUN", "F", "--prompts", "PROMPTS"]),
    ("generate --prompts", ["generate", "RUN", "ROUTER", "--prompts", "F"]),
    ("generate --profile", ["generate", "RUN", "ROUTER", "--prompts", "PROMPTS", "--profile", "F"]),
    ("report RUN_DIR", ["report", "F", "--out", "OUT/plots"]),
    ("bench prefill CHECKPOINT", ["bench", "prefill", "F", "ROUTER"]),
    ("bench prefill ROUTER", ["bench", "prefill", "RUN", "F"]),
    ("bench prefill --profile", ["bench", "prefill", "RUN", "ROUTER", "--profile", "F"]),
    ("data prepare SOURCE", ["data", "prepare", "F", "--out", "OUT/ds", "--workers", "1", "--no-progress"]),
    ("data prepare --tokenizer", ["data", "prepare", "PROMPTS", "--out", "OUT/ds", "--tokenizer", "F"]),
]


def test_every_subcommand_with_a_file_argument_is_listed():
    """A new subcommand must add its file arguments above (route-demo and bench calibrate read no file)."""
    listed = {what.split()[0] for what, _ in FILE_ARGUMENTS}
    assert set(COMMANDS) - listed == {"route-demo", "bench"} - listed


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny trained run with its router export, a prompt file and a routing trace of it."""
    root = tmp_path_factory.mktemp("file_args")
    run = root / "run"
    assert main(train_argv(run, "train.steps=2", "export.at_end=true", "train.eval_every=0")) == 0
    prompts = root / "prompts.txt"
    prompts.write_text("The quick brown fox\n")
    trace = root / "trace.npz"
    assert main(["trace", str(run), str(trace), "--tokens", "32", "--batch-size", "1"]) == 0
    return {"RUN": run, "ROUTER": run / "router", "PROMPTS": prompts, "TRACE": trace}


def _snapshot(folder: Path) -> set:
    return {p.relative_to(folder) for p in folder.rglob("*")}


# every file argument with every bad file, except a JSON scalar where the argument reads plain text (a file
# holding "5" is a valid prompt or corpus)
CASES = [
    (what, argv, kind)
    for what, argv in FILE_ARGUMENTS
    for kind in sorted(BAD_FILES)
    if not (kind == "json_scalar" and what.split()[-1] in TEXT_ARGUMENTS)
]


@pytest.mark.parametrize("what,argv,kind", CASES, ids=[f"{w}-{k}" for w, _, k in CASES])
def test_a_bad_file_is_one_line_and_exit_2(what, argv, kind, inputs, tmp_path, capsys):
    bad = tmp_path / f"bad_{kind}.json"
    bad.write_bytes(BAD_FILES[kind])
    out = tmp_path / "out"
    out.mkdir()
    names = {**{k: str(v) for k, v in inputs.items()}, "F": str(bad)}
    args = [names.get(a, a.replace("OUT", str(out))) for a in argv]
    before = _snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == 2, f"{what}: exit {code}, stderr {err!r}"
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    flag = next((a for a in reversed(argv[: argv.index("F")]) if a.startswith("--")), None)
    assert str(bad) in err or bad.name in err or (flag and flag in err), f"{what}: names neither: {err}"
    assert _snapshot(tmp_path) == before, f"{what} wrote {_snapshot(tmp_path) - before}"
