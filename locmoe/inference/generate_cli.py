"""``locmoe generate CHECKPOINT ROUTER_DIR --prompts FILE``: decode every prompt (one per line) and print
the text. Launch with torchrun to serve the experts over several processes (the export's device count)."""
from __future__ import annotations

import argparse
from pathlib import Path

from locmoe.inference.errors import InferenceError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory, or a run's out_dir (its newest checkpoint)")
    p.add_argument("router", help="exported router directory (`locmoe export`, or out_dir/router)")
    p.add_argument("--prompts", required=True, help="text file: one prompt per non-empty line")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling with this mass; default greedy")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domain", type=int, default=None, help="domain id of every prompt (random routed experts)")
    add_serving_arguments(p)


def add_serving_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared with ``locmoe bench prefill``."""
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--profile", default=None, help="calibration profile (`locmoe bench calibrate`): kernel per "
                   "load and chunk count from the cost model")
    p.add_argument("--mode", default="auto", choices=["auto", "plain", "chunked", "pipelined"],
                   help="expert execution; auto = pipelined with a profile or --chunks > 1, else plain")
    p.add_argument("--chunks", type=int, default=0, help="fixed chunk count (0 = from the profile)")
    p.add_argument("--kernel", default="auto", choices=["auto", "grouped", "dense"])
    p.add_argument("--capacity", default="dropless", choices=["dropless", "as_trained"])


def serving_options(args: argparse.Namespace):
    from backends.torch.inference.options import ServeOptions
    from locmoe.inference.profile import DeviceProfile

    profile = DeviceProfile.load(args.profile) if args.profile else None
    mode = args.mode
    if mode == "auto":
        mode = "pipelined" if profile is not None or args.chunks > 1 else "plain"
    return ServeOptions(mode=mode, chunks=args.chunks, kernel=args.kernel, profile=profile)


def read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise InferenceError(f"prompt file {p} not found")
    prompts = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise InferenceError(f"prompt file {p} holds no prompt (one per non-empty line)")
    return prompts


def main(args: argparse.Namespace) -> int:
    from backends.torch.distributed import shutdown
    from backends.torch.inference.decode import Sampling, generate
    from backends.torch.inference.loader import load_inference_model
    from locmoe.data import load_tokenizer

    if args.max_new_tokens < 1:
        raise InferenceError(f"--max-new-tokens {args.max_new_tokens}; it must be >= 1")
    prompts = read_prompts(args.prompts)
    sampling = Sampling(greedy=args.top_p is None, top_p=args.top_p or 1.0, temperature=args.temperature,
                        seed=args.seed)
    opts = serving_options(args)
    model = load_inference_model(args.checkpoint, args.router, args.device, args.dtype, args.capacity)
    model.options = opts
    tok = load_tokenizer(model.cfg.data.tokenizer)
    ids = [tok.encode(p).tolist() for p in prompts]
    new = generate(model, ids, args.max_new_tokens, sampling, args.domain)
    if model.group.my_index == 0:
        for prompt, out in zip(prompts, new):
            print(prompt + tok.decode(out))
    shutdown()
    return 0
