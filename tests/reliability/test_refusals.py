"""Nothing half-done on a refusal, no traceback anywhere (issue 31): one test class per failure class an outside
audit found. Each refusal is exit 2 and one line naming the field, file or flag, and leaves no file or folder
behind. ``locmoe`` runs in this process (``tests.refusals``) unless a kill -9 is the point."""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from locmoe import run_lock
from locmoe.checkpoint import directory as checkpointing
from locmoe.config import load_config
from locmoe.config.schema import DataConfig, DataSource
from locmoe.data import load_corpus, load_tokenizer
from locmoe.data.errors import DataError
from locmoe.data.prepare import prepare
from locmoe.model_spec import is_expert_param, parameter_shapes
from locmoe.planning.memory_plan import check_fits, parameter_count, plan_memory
from tests.checkpoint.tiny import corpus, train_argv
from tests.refusals import assert_refused, run_cli
from tests.training.runs import ROOT

HUGE = 10**12


def _train(capsys, out: Path, *overrides: str) -> tuple[int, str]:
    return run_cli(capsys, *train_argv(out, "train.steps=1", *overrides))


class TestAbsurdSizes:
    """Class 1: sizes each allowed whose model or batch cannot exist are refused before any allocation, naming
    the bytes needed and available and the field that drives them."""

    @pytest.mark.parametrize(
        "field",
        ["model.vocab_size", "model.d_model", "model.d_ff", "model.max_seq_len", "moe.d_expert", "train.batch_size"],
    )
    def test_refused_with_the_bytes_and_the_field(self, field, tmp_path, capsys):
        out = tmp_path / "run"
        code, err = _train(capsys, out, f"{field}={HUGE}")
        assert_refused(code, err, field, f"{field} = {HUGE}", "bytes", "available")
        assert not out.exists()

    def test_the_plan_of_a_small_job_is_small_and_counts_adamw(self):
        cfg = load_config("tiny_cpu")
        plan = plan_memory(cfg, ep_size=4, emulated=True)
        assert plan.optimizer == 2 * plan.parameters == 2 * plan.gradients
        assert 1 << 20 < plan.total < 1 << 30  # ~2M parameters and 16 x 128 tokens: MiBs, not GiBs
        # a process of a real 4-rank group holds a quarter of the experts and its own batch only
        assert plan_memory(cfg, ep_size=4, emulated=False).total < plan.total
        with pytest.raises(ValueError, match=r"needs at least .*\(\d+ bytes.* has 1\.0 KiB \(1024 bytes\)"):
            check_fits(cfg, 1024, "test memory", 4, True)

    @pytest.mark.parametrize(
        "layers", [(4, 1, 1), (7, 2, 2), (5, 5, 1), (6, 0, 3)], ids=lambda t: "n_layers,dense,every=%s,%s,%s" % t
    )
    def test_the_parameter_count_is_the_model_specs(self, layers):
        """Counted in closed form (no loop over model.n_layers = 2**63 - 1): equal to the listed shapes."""
        n, dense, every = layers
        cfg = load_config(
            "tiny_cpu", [f"model.n_layers={n}", f"model.dense_layers={dense}", f"model.moe_every={every}"]
        )
        listed = sum(math.prod(s) // (4 if is_expert_param(k) else 1) for k, s in parameter_shapes(cfg).items())
        assert parameter_count(cfg, local_experts=cfg.moe.num_experts // 4) == listed


class TestNothingWrittenOnARefusal:
    """Class 2: cross-field checks that need the launcher's topology run before train.out_dir is created."""

    @pytest.mark.parametrize(
        "overrides,field",
        [
            (["parallel.placement=explicit", "parallel.placement_table=[0,0,0,0,0,0,0,0]"], "parallel.placement_table"),
            (["parallel.placement=explicit", "parallel.placement_table=[0,0,1,1,2,2,3,9]"], "parallel.placement_table"),
            (["parallel.nodes=3", "parallel.devices_per_node=1"], "moe.num_experts"),
            ([f"parallel.nodes={HUGE}", f"parallel.devices_per_node={HUGE}"], "parallel.nodes"),  # emulated
        ],
        ids=["unbalanced", "out_of_range", "experts_not_divisible", "absurd_nodes"],
    )
    def test_no_out_dir(self, overrides, field, tmp_path, capsys):
        code, err = _train(capsys, tmp_path / "run", *overrides)
        assert_refused(code, err, field)
        assert os.listdir(tmp_path) == ["corpus.txt"]  # the run's corpus only: no run directory


class TestNoTraceback:
    """Class 3 (the file arguments' cases: ``tests/test_cli_file_args.py``)."""

    @pytest.mark.parametrize(
        "override,field",
        [
            ("parallel.placement_table=[0,0,1,1,2,-1,3,3]", "parallel.placement_table"),
            ("parallel.timeout_s=1e300", "parallel.timeout_s"),
            (f"train.seed={10**30}", "train.seed"),
            (f"data.seed={2**64}", "data.seed"),
        ],
    )
    def test_config_values(self, override, field, tmp_path, capsys):
        out = tmp_path / "run"
        explicit = ["parallel.placement=explicit"] if "table" in override else []
        code, err = _train(capsys, out, *explicit, override)
        assert_refused(code, err, field)
        assert not out.exists()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny trained run (1 domain, context 16) with its router export, and a prompt file."""
    root = tmp_path_factory.mktemp("served")
    from locmoe.cli import main

    assert main(train_argv(root / "run", "train.steps=1", "export.at_end=true", "train.eval_every=0")) == 0
    (root / "prompts.txt").write_text("The quick\n")
    return root


def _generate(served: Path) -> list:
    return ["generate", served / "run", served / "run/router", "--prompts", served / "prompts.txt"]


class TestServing:
    """Class 4: generate refuses what the model cannot serve, and stops at the model's context."""

    @pytest.mark.parametrize("domain", ["5", "-1", "1"])
    def test_domain_outside_the_model(self, domain, served, capsys):
        code, err = run_cli(capsys, *_generate(served), "--domain", domain, "--max-new-tokens", "2")
        assert_refused(code, err, f"--domain {domain}", "moe.domains.num_domains")

    def test_no_kv_cache_stops_at_the_context(self, served, capsys, monkeypatch):
        from backends.torch.inference import decode

        calls = []
        real = decode.next_token

        def counted(*args):
            calls.append(1)
            assert len(calls) <= 16, "decoded past the model's context of 16 tokens"
            return real(*args)

        monkeypatch.setattr(decode, "next_token", counted)
        code, err = run_cli(capsys, *_generate(served), "--no-kv-cache", "--max-new-tokens", str(10**9))
        assert code == 0, err
        assert len(calls) == 16 - len("The quick")  # the byte tokenizer: one token per character


class TestData:
    """Class 5: data.max_bytes keeps whole JSONL rows; prepare removes what killed prepares left."""

    ROWS = [json.dumps({"text": f"row {i}: " + "words " * 10}) for i in range(30)]

    def _corpus(self, tmp_path, max_bytes):
        path = tmp_path / "rows.jsonl"
        path.write_text("\n".join(self.ROWS) + "\n")
        cfg = DataConfig(sources=[DataSource(path=str(path))], seq_len=8, max_bytes=max_bytes)
        return load_corpus(cfg, load_tokenizer("byte"), 1)

    def test_a_cut_row_is_left_out(self, tmp_path):
        cut = sum(len(r) + 1 for r in self.ROWS[:20]) + 7  # 7 bytes into row 20
        whole = self._corpus(tmp_path, sum(len(r) + 1 for r in self.ROWS[:20]))
        assert self._corpus(tmp_path, cut).tokens() == whole.tokens()

    def test_a_first_row_longer_than_the_limit_names_the_field(self, tmp_path):
        with pytest.raises(DataError, match="data.max_bytes"):
            self._corpus(tmp_path, 10)

    def test_prepare_removes_leftovers_of_killed_runs_only(self, tmp_path):
        src = corpus(tmp_path)
        prefix = tmp_path / "ds"
        # a prepare's temporary folder and lock, then kill -9: what the audit found
        lock_then_die = (
            "import os, signal, sys; from locmoe import run_lock; "
            "run_lock.acquire(sys.argv[1] + f'.prepare-{os.getpid()}'); os.kill(os.getpid(), signal.SIGKILL)"
        )
        killed = subprocess.run(
            [sys.executable, "-c", lock_then_die, str(tmp_path / ".ds")],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        assert killed.returncode == -9
        dead = list(tmp_path.glob(".ds.prepare-*"))
        assert len(dead) == 1 and (dead[0] / run_lock.LOCK_FILE).exists()
        older = tmp_path / f".ds.prepare-{_dead_pid()}"  # left by a locmoe before the lock: no lock file
        older.mkdir()
        live = tmp_path / ".ds.prepare-1"  # held by a live process (here: this one, through its own flock)
        live.mkdir()
        fd = os.open(live / run_lock.LOCK_FILE, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            prepare([str(src)], str(prefix), workers=1, progress=False)
        finally:
            os.close(fd)
        assert sorted(p.name for p in tmp_path.glob(".ds.prepare-*")) == [live.name]
        assert Path(f"{prefix}.idx").is_file()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert proc.wait() == 0
    return proc.pid


class TestAtomicPruning:
    """Class 6: a kill while old checkpoints are pruned never leaves a half-deleted step_N."""

    def test_kill_mid_prune(self, tmp_path, monkeypatch):
        for step in (1, 2, 3):
            tmp = checkpointing.temp_dir(tmp_path, step)
            tmp.mkdir(parents=True)
            for name in ("model.safetensors", "optimizer_rank0.safetensors", "train_state.json"):
                (tmp / name).write_text(f"{name} of step {step}")
            checkpointing.seal(tmp_path, step, {})
        real_rmtree = shutil.rmtree

        def killed_after_one_file(path, ignore_errors=False):
            files = sorted(Path(path).glob("*"))
            if files:
                files[-1].unlink()  # one file gone, then the process dies
                raise KeyboardInterrupt("killed")
            real_rmtree(path, ignore_errors=ignore_errors)

        monkeypatch.setattr(checkpointing.shutil, "rmtree", killed_after_one_file)
        with pytest.raises(KeyboardInterrupt):
            checkpointing.prune(tmp_path, keep=1)
        monkeypatch.setattr(checkpointing.shutil, "rmtree", real_rmtree)
        for _, path in checkpointing.list_checkpoints(tmp_path):
            checkpointing.verify(path)  # every step_N that is listed is complete
        checkpointing.clean_temporaries(tmp_path)  # the next run's start removes the half-pruned one
        assert sorted(p.name for p in checkpointing.checkpoint_root(tmp_path).iterdir()) == [
            "step_00000002",
            "step_00000003",
        ]
