"""Config fuzz over every schema field, generated from the dataclasses (a new field is covered the day it is
added): each value that the field's type or rules refuse must end ``locmoe train`` with exit code 2, one line
on stderr naming the field, no traceback, and nothing written. Plus the file-level classes (malformed YAML, not
UTF-8, a bad ``defaults:``, an out_dir that is a file), a few of them as real subprocess runs."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from locmoe.cli import main
from locmoe.config import JobConfig, load_config

HUGE_INT = "1" + "0" * 400  # an int beyond the float range: as a float it is inf


def _bad_scalars(hint, rules: dict) -> list[str]:
    """YAML texts that a field of annotation ``hint`` with ``rules`` must refuse (none of them is valid)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]: null is allowed, X's bad values are not
        return [v for v in _bad_scalars(next(a for a in args if a is not type(None)), rules) if v != "null"]
    if origin is list:
        element = _bad_scalars(args[0], rules)[0]
        return ["5", "{a: 1}", f"[{element}]"]
    if dataclasses.is_dataclass(hint):
        return ["5", "[1]", "{no_such_field_xyz: 1}"]
    if hint is bool:
        return ["3", "maybe", "[true]", "null"]
    if hint is int:
        out = ["abc", "2.5", "true", "[1]", "{a: 1}", "null"]
        out += [str(rules["ge"] - 1)] if "ge" in rules else []
        out += [str(rules["gt"])] if "gt" in rules else []
        out += [str(int(rules["le"]) + 1)] if "le" in rules else []
        out += [str(rules["lt"])] if "lt" in rules else []
        return out
    if hint is float:
        out = ["abc", "true", "[1.0]", "null", ".inf", "-.inf", ".nan", "nan", "inf", "-inf", HUGE_INT]
        out += [repr(float(rules["ge"]) - 1.0)] if "ge" in rules else []
        out += [repr(float(rules["gt"]))] if "gt" in rules else []
        out += [repr(float(rules["lt"]))] if "lt" in rules else []
        if "le" in rules:  # absurd values: the upper bound must refuse them
            out += ["1.0e+300", "1e300", repr(float(rules["le"]) * 10 + 1)]
        return out
    if hint is str:
        out = ["7", "true", "[a]", "{a: 1}", "null"]
        out += ["no_such_choice_xyz"] if "choices" in rules else []
        out += ["''", "'  '"] if rules.get("nonempty") else []
        return out
    raise TypeError(f"the config fuzz has no bad values for annotation {hint!r}: extend _bad_scalars")


def _fields(cls, prefix: str = ""):
    """(dotted path, annotation, rules) of every field, recursing into sections."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path, hint = f"{prefix}{f.name}", hints[f.name]
        yield path, hint, f.metadata.get("rules", {})
        if dataclasses.is_dataclass(hint):
            yield from _fields(hint, f"{path}.")


def _element_fields():
    """Fields of dataclasses inside lists (``data.sources[0].path``...), set through one list element."""
    for path, hint, _ in list(_fields(JobConfig)):
        if typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            element = typing.get_args(hint)[0]
            for name, sub_hint, rules in _fields(element):
                if "." not in name:
                    yield path, name, sub_hint, rules


def cases() -> list[tuple[str, str, str]]:
    """(--set text, field the message must name, case id)."""
    out = []
    for path, hint, rules in _fields(JobConfig):
        for bad in _bad_scalars(hint, rules):
            out.append((f"{path}={bad}", path, f"{path}={bad[:20]}"))
    for path, name, hint, rules in _element_fields():
        others = "" if name == "path" else "path: a.txt, "
        for bad in _bad_scalars(hint, rules):
            if bad in ("''", "'  '") and name == "path":
                continue  # an empty source path is a cross-field rule, tested in test_config.py
            out.append((f"{path}=[{{{others}{name}: {bad}}}]", f"{path}[0].{name}", f"{path}[].{name}={bad[:20]}"))
    return out


CASES = cases()


def test_the_fuzz_covers_every_field():
    named = {field for _, field, _ in CASES}
    for path, _, _ in _fields(JobConfig):
        assert path in named
    assert "data.sources[0].format" in named and "train.out_dir" in named


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """An empty working directory; whatever a refused run wrote would show up in it."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("override,field", [c[:2] for c in CASES], ids=[c[2] for c in CASES])
def test_a_bad_value_is_one_line_naming_the_field(override, field, user_dir, capsys):
    rc = main(["train", "tiny_cpu", "--set", "train.out_dir=out", override])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("locmoe train: config error: ") and field in lines[0], lines[0]
    assert "Traceback" not in err
    assert _listing(user_dir) == []


# ----------------------------------------------------------------------------- file-level classes

BAD_FILES = {
    "malformed YAML": (b"model: {d_model: 64\ntrain: [\n", "is not valid YAML"),
    "tab indentation": (b"model:\n\td_model: 64\n", "is not valid YAML"),
    "not UTF-8": ("model:\n  d_model: 64 # caf\u00e9\n".encode("latin-1"), "is not UTF-8 text"),
    "a list, not sections": (b"- 1\n- 2\n", "must hold a mapping of sections"),
    "defaults a number": (b"defaults: 5\n", "defaults: in "),
    "defaults a mapping": (b"defaults: {a: b}\n", "defaults: in "),
    "defaults a list of numbers": (b"defaults: [1, 2]\n", "defaults: in "),
    "defaults an empty name": (b"defaults: ['']\n", "defaults: in "),
    "defaults a missing file": (b"defaults: [no_such_parent.yaml]\n", "config file not found"),
    "bad value in the file": (b"train: {lr: .inf}\n", "train.lr: inf is not allowed: must be a finite number"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_file_is_one_line(name, user_dir, capsys):
    text, message = BAD_FILES[name]
    job = user_dir.parent / "job.yaml"
    job.write_bytes(text)
    rc = main(["train", str(job), "--set", "train.out_dir=out"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err
    assert _listing(user_dir) == []


BAD_SETS = {
    "malformed YAML in --set": ("data.sources=[{path: x", "data.sources: --set value"),
    "no = in --set": ("train.steps", "--set: 'train.steps' is not of the form"),
    "empty key part": ("train..steps=3", "--set: 'train..steps=3' is not of the form"),
    "empty out_dir": ("train.out_dir=", "train.out_dir: '' is not allowed: must be a non-empty string"),
}


@pytest.mark.parametrize("name", sorted(BAD_SETS))
def test_a_bad_set_is_one_line(name, user_dir, capsys):
    override, message = BAD_SETS[name]
    rc = main(["train", "tiny_cpu", "--set", override])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err
    assert _listing(user_dir) == []


def test_an_out_dir_that_is_a_file_is_refused(user_dir, capsys):
    (user_dir / "taken").write_text("not a directory")
    for out, what in (("taken", "is an existing file"), ("taken/run", "is below")):
        rc = main(["train", "tiny_cpu", "--set", f"train.out_dir={out}"])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("locmoe train: config error: train.out_dir: ") and what in err
    assert _listing(user_dir) == ["taken"] and (user_dir / "taken").read_text() == "not a directory"


def test_nan_is_refused_even_where_only_a_lower_bound_is_declared():
    """``nan`` compares false with every bound, so the finite check must not depend on the bounds."""
    for override in ("train.grad_clip=nan", "train.grad_clip=.inf", "moe.capacity.factor=1e300"):
        with pytest.raises(Exception) as info:
            load_config(overrides=[override])
        assert override.split("=")[0] in str(info.value)


# ----------------------------------------------------------------------------- real processes

SUBPROCESS_CASES = [
    ["--set", "train.lr=.inf"],
    ["--set", "moe.capacity.factor=1e300", "train.steps=3"],
    ["--set", "data.sources=[{path: x"],
    ["--set", "train.out_dir="],
]


@pytest.mark.parametrize("extra", SUBPROCESS_CASES, ids=lambda e: e[1][:24])
def test_subprocess_exit_2_one_line_nothing_written(extra, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run(
        [sys.executable, "-m", "locmoe", "train", "tiny_cpu", *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
    assert _listing(tmp_path) == []
