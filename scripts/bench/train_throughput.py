"""Training throughput of one job on one device, router by router, with a dense twin and two peers
(transformers' and torchtitan's Qwen3-MoE).

    python scripts/bench/train_throughput.py [--config configs/pangu_sigma_small.yaml] [--steps 20]
        [--rows locmoe,gshard,switch,dense,qwen3,torchtitan] [--force-balance] [--user-steps 100]
        [--profile] [--out bench_results/train_throughput.json]

Every row trains the same batch (train.batch_size × data.seq_len tokens per step, bf16 autocast, AdamW) in
this one process, one row after the other, so the ratios are honest. Per row: tokens/s, MFU, peak memory,
host syncs in a non-logging step, first-step (compile) time, and with ``--profile`` where the device time
of a step goes (``train_phases.py``).

Two timings of our rows, side by side (the table says which is which):
- ``tokens_per_s``: the bench's own back-to-back steps of ``locmoe train``'s stepper (``make_stepper``: the
  CUDA-graphed step where the job allows it), no logging, validation or checkpoint: the step alone.
- ``user_tokens_per_s`` / ``user_wall_tokens_per_s``: ``locmoe train``'s own loop (``backends.torch.train.train``,
  in this process) for ``--user-steps`` steps with logging every ``logging.log_every`` (tensorboard on),
  validation every ``--user-eval-every`` and a checkpoint every ``--user-ckpt-every`` steps (the schema's
  defaults, 50 and 100): the first is the median of the tokens/s its log lines print after the first
  ``--user-warmup`` steps (training time only, as the user reads it), the second the tokens trained over the
  wall-clock time from that step to the last, validations and checkpoints included.
``graph`` / ``user_graph``: whether that path's step ran as a CUDA graph (``captured``), stayed eager (and why),
or failed to capture (the stepper's one ``train.cuda_graph:`` line); a failed capture is also in ``note``.

    MFU = tokens/s × (6·N_active + 12·L·S·d) / peak, N_active = the parameters one token multiplies
    (attention, dense FFNs, k of E experts and the router of each MoE layer, the output projection),
    L layers, S sequence length, d hidden size; peak = 989 TFLOP/s (H200 / H100 SXM dense bf16).

Rows: ``locmoe`` (the job as configured), ``gshard`` / ``switch`` (``configs/routers/*.yaml`` over it),
``dense`` (every block dense: ``model.dense_layers = n_layers``, d_ff as configured — the same active
parameters when d_ff = k·d_expert), ``qwen3`` (transformers' ``Qwen3MoeForCausalLM`` at the same sizes,
when transformers is importable), ``torchtitan`` (torchtitan 0.3.0's Qwen3-MoE at the same sizes, built and
trained as its trainer does, when torchtitan is importable: ``torchtitan_row.py`` says what differs).
``eager`` variants (``locmoe-eager`` ...) turn off torch.compile and kernel fusion: the reference path the
fast path must match; ``forced`` variants (``gshard-forced``, ``torchtitan-forced``) route round-robin.
``--force-balance`` does so for every MoE row (``moe.force_balance``; torchtitan's
``_debug_force_load_balance``): every token to a round-robin set of experts, as Megatron's and torchtitan's
quoted figures are measured; transformers' model has no such switch (its row says so).
``--smoke`` runs a tiny config on CPU in seconds (the CI check that this script works).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_phases import PHASES, phase_times  # noqa: E402
from train_user_path import Lines, graph_state, user_row  # noqa: E402

from backends.torch.distributed import init_distributed  # noqa: E402
from backends.torch.optim import make_optimizer  # noqa: E402
from backends.torch.train import (  # noqa: E402
    Batches,
    build_model,
    compile_enabled,
    loss_of,
    make_stepper,
    train_step,
)
from locmoe.config import load_config  # noqa: E402
from locmoe.data import BatchSampler, load_corpus, load_tokenizer  # noqa: E402
from locmoe.model_spec import moe_layer_indices  # noqa: E402
from locmoe.report import format_table, write_json  # noqa: E402
from locmoe.training.mfu import flops_per_token  # noqa: E402

PEAK_FLOPS = 989e12
ROUTERS = {"locmoe": [], "gshard": ["configs/routers/gshard.yaml"], "switch": ["configs/routers/switch.yaml"]}
VARIANTS = {
    "": [],  # the job as configured: the fast path
    "eager": ["train.compile=false", "moe.fuse_kernels=false", "train.cuda_graph=false"],
    "nograph": ["train.cuda_graph=false"],  # compiled blocks, eager step
    "ckpt": ["train.activation_checkpointing=true"],
    "forced": ["moe.force_balance=true"],  # every token round-robin (Megatron's and torchtitan's figures)
}


def job(args, row: str, extra=()):
    base, _, variant = row.partition("-")
    sets = [
        f"train.batch_size={args.batch}",
        f"data.seq_len={args.seq}",
        "logging.tensorboard=false",
        "logging.progress=false",
        f"data.max_bytes={args.max_bytes}",
        *args.set,
    ]
    sets += VARIANTS[variant]
    if args.force_balance and base != "dense":
        sets.append("moe.force_balance=true")
    sets += list(extra)
    layers = ROUTERS.get(base, [])
    cfg = load_config(args.config, overrides=sets, layers=[str(ROOT / p) for p in layers])
    if base == "dense":
        # the twin has no gate to place sequences by (LocMoE's default data.placement is embedding): drawn
        twin = [f"model.dense_layers={cfg.model.n_layers}", "data.placement=drawn"]
        cfg = load_config(args.config, overrides=sets + twin)
    return cfg


SDPA_SWITCHES = {"cudnn": "enable_cudnn_sdp", "flash": "enable_flash_sdp", "efficient": "enable_mem_efficient_sdp"}


def only_sdpa(name: str) -> None:
    """``--sdpa``: let scaled_dot_product_attention use only this fused kernel (and the math one where it
    cannot), for every row of the run: an experiment of the bench, not a setting of the product."""
    if name != "default":
        for kernel, switch in SDPA_SWITCHES.items():
            getattr(torch.backends.cuda, switch)(kernel == name)


def forced(args, row: str) -> bool:
    return args.force_balance or row.partition("-")[2] == "forced"


class Sync:
    """Counts host syncs in a region with torch.cuda's sync debug mode (a warning per synchronising call),
    and where in this project's code each came from."""

    def __init__(self, device: torch.device):
        self.on = device.type == "cuda"
        self.count, self.first, self.sites = 0, "", []

    def __enter__(self):
        if self.on:
            self._old = warnings.showwarning
            warnings.showwarning = self._record
            self._filters = warnings.catch_warnings()
            self._filters.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def _record(self, message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return self._old(message, category, filename, lineno, file, line)
        import traceback

        ours = [
            f"{Path(f.filename).relative_to(ROOT)}:{f.lineno}"
            for f in traceback.extract_stack()
            if f.filename.startswith(str(ROOT)) and "scripts/bench" not in f.filename
        ]
        self.sites.append(ours[-1] if ours else f"{filename}:{lineno}")

    def __exit__(self, *exc):
        if self.on:
            torch.cuda.set_sync_debug_mode("default")
            self._filters.__exit__(*exc)
            warnings.showwarning = self._old
            self.count = len(self.sites)
            self.first = self.sites[0] if self.sites else ""
        return False


def timed_steps(step, n: int, device) -> float:
    """Seconds for ``n`` back-to-back steps (the host runs ahead; one synchronise at the end)."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return time.perf_counter() - t0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(args, row: str, make_step, cfg, device, n_params: int, sync_probe=None) -> dict:
    """Warm-up (compile), sync count, timed steps, optional profile, for one row's ``step`` callable."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step = make_step()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        step()
    with Sync(device) as sync:
        (sync_probe or step)()
    seconds = timed_steps(step, args.steps, device)
    tokens = cfg.train.batch_size * cfg.data.seq_len * cfg.train.grad_accum * args.steps
    tps = tokens / seconds
    out: dict[str, Any] = dict(
        row=row,
        tokens_per_s=tps,
        step_ms=1e3 * seconds / args.steps,
        mfu=tps * flops_per_token(cfg) / PEAK_FLOPS,
        first_step_s=first,
        params_M=n_params / 1e6,
        host_syncs=sync.count if sync.on else None,
        first_sync=sync.first,
        sync_sites=sync.sites,
        peak_mem_GiB=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    )
    if args.profile and device.type == "cuda":
        out["phases_ms"] = profile_phases(step, out["step_ms"])
    return out


def profile_phases(step, step_ms: float, steps: int = 3) -> dict:
    from torch.profiler import ProfilerActivity, profile

    _sync(torch.device("cuda"))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        _sync(torch.device("cuda"))
    # the profiled steps run slower than the timed ones (tracing overhead): scale host/idle to the timed step
    return phase_times(prof, step_ms, steps)


def our_row(args, row: str) -> dict:
    cfg = job(args, row)
    ctx = init_distributed(cfg.parallel)
    corpus = corpus_for(cfg)
    sampler = BatchSampler(corpus, cfg.data.seq_len, cfg.train.batch_size, rank=0, world=1, seed=cfg.data.seed)
    batches = Batches(sampler, ctx.device)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, ctx)
    opt = make_optimizer(model, cfg.train)
    counter = iter(range(10**9))
    made, lines = [], Lines()

    def make_step():
        made.append(make_stepper(model, opt, cfg, ctx, batches, log=print))
        return lambda: made[0](next(counter))

    # host syncs are counted on the eager step: a CUDA graph's replay has none by construction, and the
    # capture itself needs a step without any
    probe = lambda: train_step(model, opt, cfg, ctx, batches, next(counter))  # noqa: E731
    with lines:
        result = measure(args, row, make_step, cfg, ctx.device, sum(p.numel() for p in model.parameters()), probe)
    result["graph"] = graph_state(made[0], lines.lines, ctx.device)
    result["force_balance"] = cfg.moe.force_balance
    with torch.no_grad():
        result["loss_after"] = float(loss_of(model, cfg, *batches.get(10**6, split="val"))[0])
    return result


_CORPUS: dict = {}


def corpus_for(cfg):
    key = (cfg.data.max_bytes, cfg.data.seq_len)
    if key not in _CORPUS:
        _CORPUS[key] = load_corpus(cfg.data, load_tokenizer(cfg.data.tokenizer), cfg.moe.domains.num_domains)
    return _CORPUS[key]


def qwen3_row(args, row: str) -> dict:
    """transformers' Qwen3-MoE at our sizes: the same experts, top-k, dense blocks where ours are dense."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = job(args, "locmoe")
    m, moe = cfg.model, cfg.moe
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    moe_layers = set(moe_layer_indices(m))
    # head_dim, rope_theta, attn_implementation: accepted as **kwargs, outside the config's typed signature
    hf = Qwen3MoeConfig(
        vocab_size=m.vocab_size,
        hidden_size=m.d_model,
        intermediate_size=m.d_ff,
        moe_intermediate_size=moe.d_expert,
        num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads,
        num_key_value_heads=m.n_heads,
        head_dim=m.d_model // m.n_heads,  # pyright: ignore[reportCallIssue]  # **kwargs
        num_experts=moe.num_experts,
        num_experts_per_tok=2,
        mlp_only_layers=[i for i in range(m.n_layers) if i not in moe_layers],
        decoder_sparse_step=1,
        max_position_embeddings=m.max_seq_len,
        rope_theta=m.rope_theta,  # pyright: ignore[reportCallIssue]  # **kwargs
        rms_norm_eps=m.norm_eps,
        tie_word_embeddings=True,
        router_aux_loss_coef=moe.router.aux_loss_coef,
        norm_topk_prob=True,
        output_router_logits=True,
        attn_implementation="sdpa",  # pyright: ignore[reportCallIssue]  # **kwargs
    )
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(hf).to(device)  # pyright: ignore[reportArgumentType]  # transformers types .to oddly
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.train.lr,
        betas=(cfg.train.beta1, cfg.train.beta2),
        weight_decay=cfg.train.weight_decay,
        fused=device.type == "cuda" or None,
    )
    corpus = corpus_for(cfg)
    sampler = BatchSampler(corpus, cfg.data.seq_len, cfg.train.batch_size, rank=0, world=1, seed=cfg.data.seed)
    batches = Batches(sampler, device)
    counter = iter(range(10**9))
    bf16 = device.type == "cuda" and cfg.train.dtype == "bfloat16"

    def step():
        x, y, _ = batches.get(next(counter))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=x)
        lm = torch.nn.functional.cross_entropy(out.logits.float().view(-1, m.vocab_size), y.view(-1))
        (lm + hf.router_aux_loss_coef * out.aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    import transformers

    result = measure(args, row, lambda: step, cfg, device, sum(p.numel() for p in model.parameters()))
    result["note"] = f"transformers {transformers.__version__}" + (
        "; routing not forced (transformers has no such option)" if forced(args, row) else ""
    )
    return result


def torchtitan_row(args, row: str) -> dict:
    """torchtitan 0.3.0's Qwen3-MoE at our sizes, built and stepped as its trainer does (``torchtitan_row``)."""
    import torchtitan_shims

    torchtitan_shims.apply()
    import torchtitan  # pyright: ignore[reportMissingImports]  # noqa: F401  (not importable: the row is skipped)
    from torchtitan_row import torchtitan_step

    if not torch.cuda.is_available():
        return dict(row=row, note="skipped: torchtitan 0.3.0 builds its device mesh on CUDA, and there is none")
    cfg = job(args, "locmoe")
    device = torch.device("cuda")
    batches = Batches(
        BatchSampler(corpus_for(cfg), cfg.data.seq_len, cfg.train.batch_size, rank=0, world=1, seed=cfg.data.seed),
        device,
    )
    torch.manual_seed(0)
    step, n_params, note, close = torchtitan_step(
        cfg,
        batches,
        device,
        compile_blocks=compile_enabled(cfg.train.compile, device),
        attn_backend=args.torchtitan_attn,
        force_balance=forced(args, row),
    )
    try:
        result = measure(args, row, lambda: step, cfg, device, n_params)
    finally:
        close()
    graph = step.state["graph"]
    result.update(graph=graph, force_balance=forced(args, row), note=note)
    if graph.startswith("capture failed"):
        result["note"] = f"CUDA graph capture failed (eager steps timed); {note}"
    return result


def curve_losses(args, row: str, variant: str) -> list[float]:
    """``args.curve`` steps of ``row`` with ``variant``'s settings ("" = the fast path), from the job's seed."""
    cfg = job(args, f"{row}-{variant}" if variant else row)
    ctx = init_distributed(cfg.parallel)
    batches = Batches(
        BatchSampler(corpus_for(cfg), cfg.data.seq_len, cfg.train.batch_size, rank=0, world=1, seed=cfg.data.seed),
        ctx.device,
    )
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, ctx)
    stepper = make_stepper(model, make_optimizer(model, cfg.train), cfg, ctx, batches)
    losses = [float(stepper(i)[0]) for i in range(args.curve)]
    del model, stepper
    return losses


def curves_of(args, row: str) -> list[dict]:
    """The fast path's bf16 loss curve against each of ``--curve-against``'s variants, from the same weights
    and batches. Naming a variant twice (``eager,eager``) measures the run-to-run spread of that path itself:
    bf16 atomics in the backward are not deterministic, and a router's discrete choices amplify a last-bit
    difference, so the spread between two runs of one path is the floor any comparison stands on."""
    fast = curve_losses(args, row, "")
    out = []
    for variant in args.curve_against.split(","):
        other = curve_losses(args, row, variant)
        rel = [abs(f - e) / abs(e) for f, e in zip(fast, other)]
        # one step's loss is one batch's: a curve is read through a 10-step running mean, as a plot smooths it
        smooth = [
            abs(sum(fast[i - 10 : i]) - sum(other[i - 10 : i])) / sum(other[i - 10 : i])
            for i in range(10, len(fast) + 1)
        ]
        out.append(
            dict(
                row=f"{row} curve",
                against=variant,
                steps=args.curve,
                fast_loss=fast[-1],
                other_loss=other[-1],
                rel_diff_at_end=rel[-1],
                max_rel_diff=max(rel),
                mean_rel_diff_last_10=sum(rel[-10:]) / len(rel[-10:]),
                smoothed_max_rel_diff=max(smooth, default=rel[-1]),
                fast_curve=fast,
                other_curve=other,
            )
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "pangu_sigma_small.yaml"))
    p.add_argument("--rows", default="locmoe,gshard,switch,dense,qwen3,torchtitan")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--max-bytes", type=int, default=3_000_000, help="corpus bytes read (stdlib sources)")
    p.add_argument("--set", action="append", default=[], help="extra config override for every row")
    p.add_argument("--profile", action="store_true", help="per-phase device time (torch.profiler)")
    p.add_argument(
        "--curve",
        type=int,
        default=0,
        help="also train this many steps of each --curve-rows row fast and with each --curve-against "
        "variant from the same start and compare the loss curves",
    )
    p.add_argument("--curve-rows", default="", help="rows whose curves are compared (default: the first row)")
    p.add_argument(
        "--curve-against",
        default="eager",
        help="variants the fast path's curve is compared with (eager, nograph, ...; one named twice measures "
        "its own run-to-run spread)",
    )
    p.add_argument(
        "--force-balance",
        action="store_true",
        help="every MoE row routes round-robin (moe.force_balance; torchtitan's _debug_force_load_balance)",
    )
    p.add_argument(
        "--user-steps",
        type=int,
        default=100,
        help="also time locmoe train's own loop for this many steps per row (logging, validation and "
        "checkpoints on); 0 = off",
    )
    p.add_argument("--user-warmup", type=int, default=20, help="user path: steps left out of its timing")
    p.add_argument("--user-eval-every", type=int, default=50, help="user path: train.eval_every")
    p.add_argument("--user-ckpt-every", type=int, default=100, help="user path: train.ckpt_every")
    p.add_argument("--user-set", action="append", default=[], help="user path: extra config override")
    p.add_argument(
        "--torchtitan-attn",
        default="flex",
        choices=["flex", "varlen", "flex_flash"],
        help="torchtitan row: its attention backend (flex: its default; sdpa is refused by torchtitan 0.3.0)",
    )
    p.add_argument(
        "--sdpa",
        default="default",
        choices=["default", *SDPA_SWITCHES],
        help="attention kernel of every row (an experiment: cudnn is FlashAttention-3-like on Hopper)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny config on CPU, 2 steps: checks the script runs")
    p.add_argument("--out", default="bench_results/train_throughput.json")
    args = p.parse_args()
    only_sdpa(args.sdpa)
    if args.smoke:
        args.config = str(ROOT / "configs" / "tiny_cpu.yaml")
        args.set += ["parallel.device=cpu", "parallel.nodes=1", "parallel.devices_per_node=1"]
        args.batch, args.seq, args.steps, args.warmup, args.max_bytes = 2, 64, 2, 1, 60_000
        args.user_steps = min(args.user_steps, 4)
        args.user_warmup, args.user_eval_every, args.user_ckpt_every = 2, 2, 4
        args.user_set = ["logging.log_every=2", "train.eval_batches=1", *args.user_set]
    rows = []
    for row in args.rows.split(","):
        base, _, variant = row.partition("-")
        try:
            if base == "qwen3":
                rows.append(qwen3_row(args, row))
            elif base == "torchtitan":
                rows.append(torchtitan_row(args, row))
            else:
                rows.append(our_row(args, row))
                if args.user_steps and variant in ("", "forced"):  # what users run: the fast path
                    rows[-1].update(user_row(args, row, job))
            mark_failed_capture(rows[-1])
        except ImportError as err:
            rows.append(dict(row=row, note=f"skipped: {err}"))
        except Exception as err:  # one failing row must not cost the others' numbers (one GPU visit)
            import traceback

            traceback.print_exc()
            rows.append(dict(row=row, note=f"failed: {type(err).__name__}: {str(err)[:200]}"))
        print(format_table([{k: v for k, v in rows[-1].items() if k not in ("phases_ms", "sync_sites")}]), flush=True)
        write_json(args.out, payload(args, rows, [], partial=True))  # a run cut short keeps its rows
        gc.collect()  # the row's model, optimizer and CUDA graph, before the next row builds its own
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if rows[-1].get("sync_sites"):
            print("  host syncs at:", ", ".join(rows[-1]["sync_sites"]), flush=True)
    curves = []
    if args.curve:
        try:
            for row in (args.curve_rows or args.rows.split(",")[0]).split(","):
                curves += curves_of(args, row)
        except Exception:
            import traceback

            traceback.print_exc()
    report(args, rows, curves)


def mark_failed_capture(row: dict) -> None:
    """A row whose CUDA graph capture failed says so in its note (its timing is of eager steps)."""
    failed = [k for k in ("graph", "user_graph") if str(row.get(k, "")).startswith("capture failed")]
    if failed and "CUDA graph capture failed" not in str(row.get("note", "")):
        row["note"] = "; ".join(x for x in (f"CUDA graph capture failed ({', '.join(failed)})", row.get("note")) if x)


def device_name(args) -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu"


def payload(args, rows: list[dict], curves: list[dict], partial: bool = False) -> dict:
    """The JSON: the run's settings and its rows (``partial`` while rows are still to come)."""
    return {
        "device": device_name(args),
        "torch": torch.__version__,
        "config": Path(args.config).name,
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "force_balance": args.force_balance,
        "sdpa": args.sdpa,
        "user_path": dict(
            steps=args.user_steps,
            warmup=args.user_warmup,
            eval_every=args.user_eval_every,
            ckpt_every=args.user_ckpt_every,
            sets=args.user_set,
        ),
        "rows": rows,
        "curves": curves,
        **({"partial": True} if partial else {}),
    }


def report(args, rows: list[dict], curves: list[dict]) -> None:
    device = device_name(args)
    by = {r["row"]: r for r in rows if "tokens_per_s" in r}
    for r in rows:
        for ref in ("dense", "qwen3", "gshard"):
            if ref in by and "tokens_per_s" in r:
                r[f"vs_{ref}"] = r["tokens_per_s"] / by[ref]["tokens_per_s"]
    cols = [
        "row",
        "tokens_per_s",
        "user_tokens_per_s",
        "user_wall_tokens_per_s",
        "graph",
        "user_graph",
        "mfu",
        "step_ms",
        "peak_mem_GiB",
        "host_syncs",
        "first_step_s",
        "vs_dense",
        "vs_qwen3",
        "vs_gshard",
        "loss_after",
        "note",
    ]
    routing = "forced balance (round-robin) in every MoE row" if args.force_balance else "the routers' own choice"
    print(
        f"\n{device}, torch {torch.__version__}, {Path(args.config).name}, batch {args.batch} x {args.seq}, {routing}"
    )
    print(format_table(rows, [c for c in cols if any(c in r for r in rows)]))
    print(
        "tokens_per_s: the bench's back-to-back steps (locmoe train's stepper, no logging/eval/checkpoint); "
        f"user_tokens_per_s: locmoe train's own loop, the median its log lines print after step "
        f"{args.user_warmup}; user_wall_tokens_per_s: the same loop's tokens over wall time, validation every "
        f"{args.user_eval_every} and a checkpoint every {args.user_ckpt_every} steps included"
    )
    prof = [r for r in rows if "phases_ms" in r]
    if prof:
        names = [*PHASES, "optimizer", "other (embedding, loss, grad clip)", "unattributed device", "host/idle"]
        print("\nms per step by phase (forward + its backward):")
        print(format_table([{"row": r["row"], **{n: r["phases_ms"].get(n, 0.0) for n in names}} for r in prof]))
    for c in curves:
        print(
            f"\nloss curve, {c['row']}: step {c['steps']}: fast {c['fast_loss']:.4f}, {c['against']} "
            f"{c['other_loss']:.4f}, relative difference {c['rel_diff_at_end']:.2%} (mean of the last 10 steps "
            f"{c['mean_rel_diff_last_10']:.2%}, largest over the curve {c['max_rel_diff']:.2%}; of the 10-step "
            f"running means, largest {c['smoothed_max_rel_diff']:.2%})"
        )
    write_json(args.out, payload(args, rows, curves))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
