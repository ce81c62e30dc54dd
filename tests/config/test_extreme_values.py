"""Every schema field at the extremes its own rules allow (its bounds, or the 64-bit range and the largest
finite float where it has none; the empty string for a free string): ``locmoe train`` either refuses it
cleanly (exit 2, one line naming the field, train.out_dir never created) or accepts it and builds the model.
Values are taken one field at a time, not as a cross-product; choices and booleans are not extremes.

A job that passes every check stops right after its model is built and its first batch drawn (the training
steps of ``train.steps = 2**63 - 1`` are not the point): an allocation that fails there is the traceback this
test exists to catch."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import pytest
import yaml

from locmoe import run_lock
from locmoe.config.loader import INT64_MAX, INT64_MIN
from locmoe.config.schema import DataSource, JobConfig
from tests.checkpoint.tiny import SMALL, TEXT
from tests.refusals import assert_refused, run_cli

LARGEST_FLOAT = 1.7976931348623157e308
# A field whose extremes only mean something together with another value.
COMPANIONS = {"parallel.placement_table": ["parallel.placement=explicit"]}


def _leaves(cls, prefix: str = ""):
    """(dotted name, type, rules) of every scalar field of the schema; list fields as themselves."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, name = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            yield from _leaves(hint, f"{name}.")
        else:
            yield name, hint, f.metadata.get("rules", {})


def _extremes(hint, rules: dict) -> list:
    """The values at the edges of what one field allows by itself."""
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    if typing.get_origin(base) is list:
        return [[v] * 8 for v in _extremes(typing.get_args(base)[0], rules)]
    if "choices" in rules or base is bool:
        return []
    if base is str:
        return [] if rules.get("nonempty") else [""]
    if base is int:
        low = rules.get("ge", rules["gt"] + 1 if "gt" in rules else INT64_MIN)
        high = rules.get("le", rules["lt"] - 1 if "lt" in rules else INT64_MAX)
        return [int(low), int(high)]
    low = rules["ge"] if "ge" in rules else math.nextafter(rules["gt"], math.inf) if "gt" in rules else -LARGEST_FLOAT
    high = rules["le"] if "le" in rules else math.nextafter(rules["lt"], -math.inf) if "lt" in rules else LARGEST_FLOAT
    return [float(low), float(high)]


def _cases():
    for name, hint, rules in _leaves(JobConfig):
        if name == "data.sources":
            for sub, sub_hint, sub_rules in _leaves(DataSource):
                for value in _extremes(sub_hint, sub_rules):
                    yield f"data.sources[0].{sub}", value
            continue
        for value in _extremes(hint, rules):
            yield name, value


CASES = list(_cases())


class Accepted(Exception):
    """The job passed every check and its model was built: what happens next is training, not this test."""


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("extremes")
    (root / "corpus.txt").write_text(TEXT)
    return root


def test_every_section_has_extremes():
    assert {name.split(".")[0] for name, _ in CASES} >= {"model", "moe", "parallel", "data", "train", "logging"}
    assert len(CASES) > 100


def _train(override: str, field: str, out: Path, job: Path, capsys, monkeypatch):
    """``locmoe train`` of the tiny job with one override: "accepted", or (exit code, stderr) of a refusal."""
    from backends.torch import train as torch_train

    def stop_after_build(model, optimizer, cfg, ctx, batches, log=print):
        batches.get(0)  # the first batch is allocated too
        raise Accepted

    monkeypatch.setattr(torch_train, "make_stepper", stop_after_build)
    quiet = ["logging.progress=false", "logging.tensorboard=false", "export.at_end=false"]
    corpus = f"data.sources=[{{path: {job / 'corpus.txt'}}}]"
    sets = [*SMALL, *quiet, corpus, f"train.out_dir={out}", *COMPANIONS.get(field, []), override]
    try:
        return run_cli(capsys, "train", "tiny_cpu", *[a for s in sets for a in ("--set", s)])
    except Accepted:
        run_lock.release(out)
        return "accepted"


def test_a_job_that_passes_reaches_its_model(job, tmp_path, capsys, monkeypatch):
    """The harness itself: an ordinary value is accepted, and then the run directory exists."""
    assert _train("name=ordinary", "name", tmp_path / "run", job, capsys, monkeypatch) == "accepted"
    assert (tmp_path / "run").is_dir()


@pytest.mark.parametrize("field,value", CASES, ids=[f"{n}={v!r}"[:60] for n, v in CASES])
def test_extreme_value(field, value, job, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    if field.startswith("data.sources[0]."):
        source = {"path": str(job / "corpus.txt"), field.rsplit(".", 1)[1]: value}
        override = f"data.sources={yaml.safe_dump([source], default_flow_style=True).strip()}"
    else:
        override = f"{field}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
    result = _train(override, field, out, job, capsys, monkeypatch)
    if result == "accepted":
        return
    assert_refused(*result, field.split("[")[0])
    assert not Path(out).exists(), f"refused, yet {out} was created"
