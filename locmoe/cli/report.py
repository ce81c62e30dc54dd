"""``locmoe report RUN_DIR``: PNG plots of a training run from what its logger wrote.

Reads ``RUN_DIR/metrics.jsonl`` (scalars per logged step) and ``RUN_DIR/expert_load.jsonl`` (per logged step
and MoE layer: copies routed to each expert, capacity) and writes, into ``--out`` (default RUN_DIR/plots):
loss.png (training and validation loss), tokens_per_s.png, routing.png (dropped, cross-node and in-node
fractions of the routed copies) and expert_load_layer_L.png per MoE layer. A resumed run appends to both
files; the last record of a step (and layer) wins.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from locmoe.atomic_io import check_replaceable
from locmoe.errors import LocMoEError
from locmoe.training.train_log import LOADS_FILE


class ReportError(LocMoEError):
    """A run directory that cannot be reported on."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run's train.out_dir (holds metrics.jsonl)")
    p.add_argument("--out", metavar="DIR", default=None, help="where to write the PNG files (default: RUN_DIR/plots)")


def main(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    if not run.is_dir():
        raise ReportError(f"RUN_DIR {run} is not a directory (pass a run's train.out_dir)")
    metrics = read_jsonl(run / "metrics.jsonl", what="metrics.jsonl", keys=("step",))
    steps = dedupe(metrics, key=lambda r: r["step"])
    if not steps:
        raise ReportError(f"{run / 'metrics.jsonl'} holds no logged step")
    loads_path = run / LOADS_FILE
    loads = []
    if loads_path.exists():
        rows = read_jsonl(loads_path, LOADS_FILE, keys=("step", "layer"))
        loads = dedupe(rows, key=lambda r: (r["layer"], r["step"]))
    out = Path(args.out) if args.out else run / "plots"
    if out.exists() or out.is_symlink():  # an earlier report's plots are redrawn; anything else is kept
        check_replaceable(out, is_report, "report")
    figures = scalar_figures(steps) + load_figures(loads)  # everything is drawn before anything is written
    if not loads:
        print(f"note: no {LOADS_FILE} in {run}: no expert-load plots", file=sys.stderr)
    from locmoe.training.plots import save_png

    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures:
        print(save_png(fig, out / name))
    return 0


def is_report(path: Path) -> bool:
    """A folder of this command's PNG files only (loss.png, ..., expert_load_layer_L.png)."""
    names = ("loss.png", "tokens_per_s.png", "routing.png")
    return all(
        p.is_file() and (p.name in names or re.fullmatch(r"expert_load_layer_\d+\.png", p.name)) for p in path.iterdir()
    )


def read_jsonl(path: Path, what: str, keys: tuple[str, ...]) -> list[dict]:
    """The JSON objects of a log file, each with integer ``keys``; an unfinished last line (the run was
    killed while writing it) is skipped, any other bad line is an error naming the file and line."""
    if not path.is_file():
        raise ReportError(f"no {what} in {path.parent} (training writes it to train.out_dir)")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):  # no newline after it: the last write was cut short
                print(f"note: {path}:{i}: unfinished last line skipped", file=sys.stderr)
                continue
            raise ReportError(f"{path}:{i}: not a JSON object: {line[:60]!r}") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), int) for k in keys):
            raise ReportError(f"{path}:{i}: a record needs integer {' and '.join(keys)}, got {line[:60]!r}")
        rows.append(row)
    return rows


def dedupe(rows: list[dict], key) -> list[dict]:
    """The last row of each key, sorted by key (a resumed run logs some steps again)."""
    last = {key(r): r for r in rows}
    return [last[k] for k in sorted(last)]


def series(rows: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of the rows that hold a numeric ``key``."""
    pts = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]
    return ([s for s, _ in pts], [v for _, v in pts]) if pts else ([], [])


def scalar_figures(rows: list[dict]) -> list[tuple[str, object]]:
    """(file name, figure) of the line plots whose scalars the run logged."""
    from locmoe.training.plots import line_figure

    def present(**named: str) -> dict:
        return {label: series(rows, key) for label, key in named.items() if series(rows, key)[0]}

    out = []
    loss = present(**{"training (LM)": "lm_loss" if series(rows, "lm_loss")[0] else "loss", "validation": "val_loss"})
    if loss:
        out.append(("loss.png", line_figure("cross-entropy loss", "loss (nats / token)", loss)))
    speed = present(**{"tokens/s": "tokens_per_s"})
    if speed:
        out.append(
            (
                "tokens_per_s.png",
                line_figure(
                    "training throughput (excludes validation and checkpoints)", "tokens / s", speed, ylim=(0, None)
                ),
            )
        )
    routing = present(
        **{
            "dropped (of routed)": "dropped_fraction",
            "cross-node (of kept)": "cross_node_fraction",
            "in-node (of kept)": "in_node_fraction",
        }
    )
    if routing:
        out.append(
            (
                "routing.png",
                line_figure("token copies, mean over MoE layers", "fraction of copies", routing, ylim=(0, None)),
            )
        )
    return out


def load_figures(rows: list[dict]) -> list[tuple[str, object]]:
    """One expert-load heatmap per MoE layer over the whole run."""
    from locmoe.training.plots import expert_load_figure

    out = []
    for layer in sorted({r["layer"] for r in rows}):
        mine = [r for r in rows if r["layer"] == layer]
        try:
            loads = np.array([r["load"] for r in mine], dtype=np.float64)
            caps = np.array([np.broadcast_to(r["capacity"], len(r["load"])) for r in mine], dtype=np.float64)
        except (KeyError, ValueError, TypeError) as err:
            raise ReportError(
                f"{LOADS_FILE}: layer {layer}: records need 'load' [E] and 'capacity' of the same "
                f"number of experts ({err})"
            ) from None
        out.append(
            (f"expert_load_layer_{layer}.png", expert_load_figure([r["step"] for r in mine], loads, caps, layer))
        )
    return out
