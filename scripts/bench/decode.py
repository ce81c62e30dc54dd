"""Decode throughput of our KV-cache path against transformers' own ``generate`` on the same weights: a
random checkpoint at ``configs/pangu_sigma_small.yaml`` sizes is written, exported with ``locmoe export
--format hf`` and loaded by both (ours from the checkpoint, transformers from the export). bf16, 128-token
prompts, 32 and 256 new tokens, batch 1 and 32; our step eager and as a CUDA graph. One table (tokens/s,
ms per decode step, time to first token, start-up), the goals of issue 15, one JSON.

    python scripts/bench/decode.py [--out bench_results/decode.json] [--compile]      # one GPU
    python scripts/bench/decode.py --smoke                                            # tiny, CPU, seconds

tokens/s = batch x new tokens / the whole call (prefill included), as measured for transformers.
Start-up = loading the model + building the generator (cache, graph capture) + the first token. The
transformers part runs in a try: if it fails, its rows say why and ours are still printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from backends.torch.inference.kv_generate import CachedGenerator  # noqa: E402
from backends.torch.inference.loader import load_inference_model  # noqa: E402
from backends.torch.inference.timing import sync  # noqa: E402
from locmoe.checkpoint.directory import seal, temp_dir  # noqa: E402
from locmoe.config import config_to_dict, load_config  # noqa: E402
from locmoe.export import export_checkpoint  # noqa: E402
from locmoe.export.hf_export import export_hf  # noqa: E402
from locmoe.model_spec import init_rule, parameter_shapes  # noqa: E402
from locmoe.report import format_table, write_json  # noqa: E402

FULL = dict(prompt=128, new="32,256", batches="1,32", reps=3)
SMOKE = dict(prompt=12, new="4,8", batches="1,3", reps=1)
SMOKE_MODEL = [
    "model.d_model=64",
    "model.n_heads=4",
    "model.n_layers=4",
    "model.dense_layers=2",
    "model.moe_every=2",
    "model.d_ff=128",
    "model.max_seq_len=64",
    "data.seq_len=64",
    "moe.num_experts=4",
    "moe.d_expert=96",
]
GOALS = {"speedup_vs_transformers": 3.0, "step_256_over_32": 1.2, "startup_s": 5.0}


def job(a):
    return load_config(
        ROOT / "configs" / "pangu_sigma_small.yaml",
        overrides=[
            *(SMOKE_MODEL if a.smoke else []),
            "moe.capacity.mode=dropless",
            "moe.check_finite=false",
            "parallel.nodes=1",
            "parallel.devices_per_node=1",
            f"parallel.device={'cpu' if a.smoke else 'cuda'}",
            f"train.out_dir={a.work}/run",
        ],
    )


def random_checkpoint(cfg, out: Path, device: str) -> Path:
    """Every spec tensor drawn by its init rule (on ``device``: fast at GPU sizes), router state NaN."""
    g = torch.Generator(device=device).manual_seed(0)
    weights = {}
    for name, shape in parameter_shapes(cfg).items():
        kind, std = init_rule(name, cfg.model)
        if kind == "ones":
            t = torch.ones(shape)
        elif kind == "normal":
            t = torch.randn(shape, generator=g, device=device) * std
        else:
            nan = torch.full(shape, float("nan"), dtype=torch.float64)
            t = nan if name.endswith("angle_ema") else torch.zeros(shape)
        weights[name] = t.cpu().numpy()
    from safetensors.numpy import save_file

    tmp = temp_dir(out, 0)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / "model.safetensors"))
    layout = {"world_size": 1, "ep_size": 1, "nodes": 1, "devices_per_node": 1, "emulated": False}
    (tmp / "train_state.json").write_text(
        json.dumps({"step": 0, "config": config_to_dict(cfg), "layout": layout, "backend": "torch"})
    )
    return seal(out, 0, {"backend": "torch"})


def prompts(batch: int, length: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, length), generator=g).tolist()


def bench_ours(a, ckpt: Path, router: Path, news: list[int], batches: list[int], dtype: str) -> tuple[list, dict, list]:
    rows, extra, tokens_b1 = [], {}, []
    t0 = time.perf_counter()
    model = load_inference_model(ckpt, router, a.device, dtype)
    sync(model.embed.weight.device)
    load_s = extra["ours_load_s"] = time.perf_counter() - t0
    modes = [("eager", False, False)] + ([("cuda_graph", True, False)] if a.device == "cuda" else [])
    if a.compile:
        modes.append(("compile+graph" if a.device == "cuda" else "compile", a.device == "cuda", True))
    for mode, graph, comp in modes:
        for B in batches:
            ps = prompts(B, a.prompt)
            try:
                t1 = time.perf_counter()
                gen = CachedGenerator(model, B, a.prompt + max(news), cuda_graph=graph, compile_step=comp)
                build_s = time.perf_counter() - t1
                _, first = gen.run(ps, 2)
            except Exception as err:  # a mode that cannot run still leaves the others
                rows.append(dict(system="ours", mode=mode, batch=B, error=f"{type(err).__name__}: {err}"[:160]))
                continue
            for new in news:
                runs = [gen.run(ps, new) for _ in range(a.reps)]
                out, t = sorted(runs, key=lambda r: r[1].first_token_s + r[1].decode_s)[len(runs) // 2]
                if B == 1 and mode == "eager" and new == max(news):
                    tokens_b1 = out[0]
                total = t.first_token_s + t.decode_s
                rows.append(
                    dict(
                        system="ours",
                        mode=mode,
                        batch=B,
                        new=new,
                        tokens_per_s=B * new / total,
                        ms_per_step=1e3 * t.decode_s / max(t.steps, 1),
                        ttft_ms=1e3 * t.first_token_s,
                        startup_s=load_s + build_s + first.first_token_s,
                        build_s=build_s,
                    )
                )
    return rows, extra, tokens_b1


def bench_transformers(a, hf_dir: Path, news: list[int], batches: list[int], dtype: str) -> tuple[list, dict, list]:
    import transformers

    dev = torch.device(a.device)
    rows: list = []
    extra: dict[str, Any] = {"transformers": transformers.__version__}
    t0 = time.perf_counter()
    # Any: transformers types from_pretrained as a generate mix-in, whose .to and .generate it does not type
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=getattr(torch, dtype))
    model = model.to(dev).eval()
    sync(dev)
    load_s = extra["transformers_load_s"] = time.perf_counter() - t0

    def generate(ids, new):
        sync(dev)
        t = time.perf_counter()
        with torch.no_grad():
            # no EOS in the byte vocabulary (the export's eos_token_id is null): every call makes `new` tokens
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False, pad_token_id=0
            )
        sync(dev)
        return out, time.perf_counter() - t

    tokens_b1 = []
    for B in batches:
        ids = torch.tensor(prompts(B, a.prompt), device=dev)
        _, first_s = generate(ids, 1)  # also the warm-up
        for new in news:
            out, secs = generate(ids, new)
            if B == 1 and new == max(news):
                tokens_b1 = out[0, a.prompt :].tolist()
            rows.append(
                dict(
                    system="transformers",
                    mode="generate",
                    batch=B,
                    new=new,
                    tokens_per_s=B * new / secs,
                    ms_per_step=1e3 * (secs - first_s) / max(new - 1, 1),
                    ttft_ms=1e3 * first_s,
                    startup_s=load_s + first_s if B == batches[0] else None,
                )
            )
    return rows, extra, tokens_b1


def goals(rows: list, news: list[int]) -> dict:
    """The issue's goals from the rows: speed-up per batch (our best mode at the longest output), flatness
    (ms per step at the longest over the shortest output), start-up."""
    ours = [r for r in rows if r["system"] == "ours" and "error" not in r]
    hf = {(r["batch"], r["new"]): r for r in rows if r["system"] == "transformers" and "error" not in r}
    out = {}
    for B in sorted({r["batch"] for r in ours}):
        longest = [r for r in ours if r["batch"] == B and r["new"] == max(news)]
        if not longest:
            continue
        best = max(longest, key=lambda r: r["tokens_per_s"])
        out[f"batch{B}_best_mode"] = best["mode"]
        if (B, max(news)) in hf:
            out[f"batch{B}_speedup_vs_transformers"] = best["tokens_per_s"] / hf[(B, max(news))]["tokens_per_s"]
        short = next(r for r in ours if r["batch"] == B and r["new"] == min(news) and r["mode"] == best["mode"])
        out[f"batch{B}_step_{max(news)}_over_{min(news)}"] = best["ms_per_step"] / short["ms_per_step"]
    if ours:
        out["startup_s"] = min(r["startup_s"] for r in ours)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, fp32: checks the script in seconds")
    for k, v in FULL.items():
        p.add_argument(f"--{k}", type=type(v), default=None, help=f"default {v} ({SMOKE[k]} smoke)")
    p.add_argument("--compile", action="store_true", help="also measure the decode step through torch.compile")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--work", default=None, help="where the checkpoint and the export go (default: a temp dir)")
    p.add_argument("--out", default="bench_results/decode.json")
    a = p.parse_args()
    for k, v in (SMOKE if a.smoke else FULL).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if not a.smoke and not torch.cuda.is_available():
        sys.exit("decode.py needs a CUDA GPU (or --smoke for a CPU check)")
    a.device, dtype = ("cpu", "float32") if a.smoke else ("cuda", "bfloat16")
    a.work = a.work or tempfile.mkdtemp(prefix="decode_bench_")
    news, batches = [int(x) for x in a.new.split(",")], [int(x) for x in a.batches.split(",")]
    cfg = job(a)
    t0 = time.perf_counter()
    run = Path(a.work) / "run"
    ckpt = random_checkpoint(cfg, run, a.device)
    export_checkpoint(ckpt, run / "router")
    hf_dir = export_hf(ckpt, Path(a.work) / "hf")
    extra: dict[str, Any] = {"prepare_s": time.perf_counter() - t0}
    rows, ours_extra, ours_b1 = bench_ours(a, ckpt, run / "router", news, batches, dtype)
    extra.update(ours_extra)
    hf_b1 = []
    if not a.skip_transformers:
        try:
            hf_rows, hf_extra, hf_b1 = bench_transformers(a, hf_dir, news, batches, dtype)
            rows += hf_rows
            extra.update(hf_extra)
        except Exception as err:  # print our rows whatever happens on the transformers side
            rows.append(dict(system="transformers", mode="generate", error=f"{type(err).__name__}: {err}"[:200]))
            extra["transformers_traceback"] = traceback.format_exc()[-2000:]
    if ours_b1 and hf_b1:
        same = next((i for i, (x, y) in enumerate(zip(ours_b1, hf_b1)) if x != y), min(len(ours_b1), len(hf_b1)))
        extra["batch1_greedy_tokens_agreeing"] = same
    result = goals(rows, news)
    m = cfg.model
    print(
        f"decode: d={m.d_model}, {m.n_layers} blocks ({m.dense_layers} dense, then MoE every {m.moe_every}), "
        f"E={cfg.moe.num_experts}, f={cfg.moe.d_expert}, "
        f"top-{cfg.moe.router.top_k} {cfg.moe.router.kind}; {dtype} on {a.device} "
        f"({torch.cuda.get_device_name() if a.device == 'cuda' else 'cpu'}), torch {torch.__version__}, "
        f"{a.prompt}-token prompts"
    )
    cols = ["system", "mode", "batch", "new", "tokens_per_s", "ms_per_step", "ttft_ms", "startup_s", "build_s", "error"]
    print(format_table(rows, [c for c in cols if any(c in r for r in rows)], ".4g"))
    for k, v in {**result, **{k: v for k, v in extra.items() if k != "transformers_traceback"}}.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    if "transformers_traceback" in extra:
        print(extra["transformers_traceback"], file=sys.stderr)
    print(
        f"goals: speed-up >= {GOALS['speedup_vs_transformers']}x, step time {max(news)} vs {min(news)} new tokens "
        f"<= {GOALS['step_256_over_32']}x, start-up <= {GOALS['startup_s']} s"
    )
    print(f"wrote {write_json(a.out, {'args': vars(a), 'rows': rows, 'goals': result, 'targets': GOALS, **extra})}")


if __name__ == "__main__":
    main()
