"""Reading back a run's logs as their viewers would: tensorboard scalars (with the purge a resumed run asks
for) and the history of an offline W&B run, plus the tiny job the batch-job tests train."""

from __future__ import annotations

import json
from pathlib import Path

from tests.report.images import tb_events

# A job that trains in well under a second a step on 2 cores; the rest of a run is start-up (imports).
TINY_JOB = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.d_ff=64",
    "moe.d_expert=32",
    "data.seq_len=32",
    "model.max_seq_len=32",
    "train.batch_size=1",
    "train.warmup_steps=1",
    "train.eval_batches=1",
]


def tiny_corpus(folder: Path) -> str:
    """A ~100 kB text file in ``folder``; returns the ``data.sources`` override that reads it."""
    path = folder / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(2000)))
    return f"data.sources=[{{path: {path}}}]"


def tb_scalars(tb_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value, as TensorBoard shows them: the event files in order, and a session start at step
    S (a writer's ``purge_step``) drops the events of steps >= S written before it."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for event in tb_events(tb_dir):
        if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
            for steps in out.values():
                for step in [s for s in steps if s >= event.step]:
                    del steps[step]
        for v in event.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def wandb_history(run_file: Path) -> dict[int, dict[str, float]]:
    """step -> {tag: value} of the ``history`` records of a ``run-*.wandb`` file (W&B's LevelDB-style log:
    a 7-byte header, then 32 KiB blocks of records with a 7-byte header each: crc, u16 length, type)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(run_file).read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a W&B run file"
    out: dict[int, dict[str, float]] = {}
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):  # FIRST / MIDDLE pieces of a record cut by a block end
            continue
        record = wandb_internal_pb2.Record.FromString(pending)
        pending = b""
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            out[record.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    return out
