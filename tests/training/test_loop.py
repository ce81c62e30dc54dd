"""The one training loop (``locmoe.training.loop.run``) on a trainer with no framework: what it asks of the
``Trainer`` protocol and when, the checkpoints it seals, the scalars it logs, and a resume that continues from
the checkpoint's step. The backends' trainers are tested by the training tests; this pins the loop itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from locmoe import run_lock
from locmoe.backend_api import Trainer, TrainerFacts
from locmoe.checkpoint.directory import latest, list_checkpoints
from locmoe.config import load_config
from locmoe.parallel.context import DistContext
from locmoe.parallel.topology import LaunchEnv, layout_from_config
from locmoe.training.common import MOE_MEAN_KEYS
from locmoe.training.loop import run

ROOT = Path(__file__).resolve().parents[2]


class Corpus:
    description = "no text: the fake trainer draws nothing"

    def tokens(self) -> int:
        return 1000


class FakeTrainer:
    """Records every call; a step's 'loss' is 10 - step, its auxiliary objective 0.5, its gradient norm 1."""

    def __init__(self, cfg):
        self.cfg, self.calls = cfg, []
        layout = layout_from_config(cfg.parallel, LaunchEnv(1, 0, 1, "none"))
        ctx = DistContext.one_process(layout, "cpu", None)
        self.facts = TrainerFacts(
            ctx=ctx,
            backend="fake",
            corpus=Corpus(),
            parameters=123,
            device="no device",
            tokens_per_step=64,
            moe_layers=[1],
        )

    def prepare(self, resume):
        self.calls.append(("prepare", resume))
        run_lock.acquire(self.cfg.train.out_dir)
        return latest(self.cfg.train.out_dir) if resume else None

    def build_model(self):
        self.calls.append(("build_model",))

    def load_checkpoint(self, path):
        self.calls.append(("load_checkpoint", Path(path).name))
        return json.loads((Path(path) / "train_state.json").read_text())["step"]

    def make_step(self, log):
        self.calls.append(("make_step",))

    def step(self, step):
        self.calls.append(("step", step))
        return step

    def to_host(self, outputs):
        return 10.0 - outputs, 0.5, 1.0

    def moe_statistics(self, outputs):
        summary = dict(
            capacity_max=4.0,
            capacity_bound=None,
            max_expert_load=3.0,
            cross_node_bytes=0.0,
            **{k: 0.25 for k in MOE_MEAN_KEYS},
        )
        return [summary], [np.array([3.0, 1.0])], [np.array([4.0, 4.0])]

    def validate(self):
        self.calls.append(("validate",))
        return 7.5

    def mean_over_ranks(self, values):
        return values

    def barrier(self):
        pass

    def check_weights_finite(self, step):
        self.calls.append(("check_weights_finite", step))

    def write_rank_files(self, tmp, step):
        self.calls.append(("write_rank_files", step))
        (Path(tmp) / "weights.txt").write_text(f"step {step}\n")


def job(tmp_path, **sets):
    overrides = {
        "train.out_dir": str(tmp_path / "run"),
        "train.steps": 6,
        "logging.log_every": 2,
        "train.eval_every": 3,
        "train.ckpt_every": 4,
        "train.warmup_steps": 1,
        "export.at_end": False,
        "logging.tensorboard": False,
        "logging.progress": False,
        **sets,
    }
    return load_config(str(ROOT / "configs" / "tiny_cpu.yaml"), overrides=[f"{k}={v}" for k, v in overrides.items()])


def test_the_loop_asks_the_trainer_in_order_and_seals_its_checkpoints(tmp_path):
    cfg = job(tmp_path)
    trainer = FakeTrainer(cfg)
    assert isinstance(trainer, Trainer)
    result = run(trainer, cfg)
    names = [c[0] for c in trainer.calls]
    assert names[:3] == ["prepare", "build_model", "make_step"]
    assert [c[1] for c in trainer.calls if c[0] == "step"] == [0, 1, 2, 3, 4, 5]
    # validation after steps 3 and 6, checkpoints after 4 and 6 (the last step always), each checked first
    assert names.count("validate") == 2
    assert [c[1] for c in trainer.calls if c[0] == "write_rank_files"] == [4, 6]
    assert [c[1] for c in trainer.calls if c[0] == "check_weights_finite"] == [4, 6]
    assert names.index("validate") > trainer.calls.index(("step", 2)) and names.index("validate") < trainer.calls.index(
        ("step", 3)
    )
    sealed = [path for _, path in list_checkpoints(cfg.train.out_dir)]
    assert [p.name for p in sealed] == ["step_00000004", "step_00000006"]
    assert (sealed[-1] / "weights.txt").read_text() == "step 6\n"
    state = json.loads((sealed[-1] / "train_state.json").read_text())
    assert state["step"] == 6 and state["backend"] == "fake"
    last = result["last"]
    assert last["step"] == 6 and last["val_loss"] == 7.5 and last["lm_loss"] == 10.0 - 5
    assert last["loss"] == last["lm_loss"] + 0.5  # the objective: LM loss + auxiliary
    assert result["checkpoint"] == str(sealed[-1])
    assert not run_lock.in_use(cfg.train.out_dir)


def test_a_resume_continues_from_the_checkpoint_step(tmp_path):
    run(FakeTrainer(job(tmp_path, **{"train.steps": 4})), job(tmp_path, **{"train.steps": 4}))
    cfg = job(tmp_path, **{"train.steps": 8})
    trainer = FakeTrainer(cfg)
    run(trainer, cfg, resume=True)
    assert ("load_checkpoint", "step_00000004") in trainer.calls
    assert [c[1] for c in trainer.calls if c[0] == "step"] == [4, 5, 6, 7]
    assert [c[1] for c in trainer.calls if c[0] == "write_rank_files"] == [8]
