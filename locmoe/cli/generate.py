"""``locmoe generate CHECKPOINT [ROUTER_DIR] --prompts FILE``: decode every prompt (one per line) and print
each prompt with its continuation, a rule of dashes between them, then tokens/s and the time to the first
token (stderr). ROUTER_DIR defaults to the run's own export, RUN/router. Prompts are batched and decoded with
the KV cache (``--no-kv-cache``: the reference path). Launch with torchrun to serve the experts over several
processes (the export's device count)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from locmoe.inference.errors import InferenceError

if TYPE_CHECKING:
    from locmoe.backend_api import Server


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory, or a run's out_dir (its newest checkpoint)")
    p.add_argument(
        "router",
        nargs="?",
        default=None,
        help="exported router directory (`locmoe export`); default: RUN/router, where training exports it "
        "(RUN: the run directory of CHECKPOINT)",
    )
    p.add_argument("--prompts", required=True, help="text file: one prompt per non-empty line")
    from locmoe.cli.args import float_in, int_at_least

    p.add_argument("--max-new-tokens", type=int_at_least(1), default=32, help="tokens to generate per prompt")
    p.add_argument(
        "--top-p", type=float_in(gt=0, le=1), default=None, help="nucleus sampling with this mass; default greedy"
    )
    p.add_argument("--temperature", type=float_in(gt=0), default=1.0, help="sampling temperature (with --top-p)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the sampling")
    p.add_argument("--domain", type=int, default=None, help="domain id of every prompt (random routed experts)")
    p.add_argument("--batch-size", type=int_at_least(1), default=32, help="prompts decoded together (KV cache)")
    p.add_argument("--eos-id", type=int_at_least(0), default=None, help="stop a prompt at this token id")
    p.add_argument("--cuda-graph", action="store_true", help="replay the one-token decode step as a CUDA graph")
    p.add_argument(
        "--no-kv-cache",
        dest="kv_cache",
        action="store_false",
        help="re-run the whole sequence every step, one prompt at a time (the reference path)",
    )
    add_serving_arguments(p)


def add_serving_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared with ``locmoe bench prefill``."""
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda if present")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default bfloat16 on CUDA, float32 on CPU",
    )
    p.add_argument(
        "--profile",
        default=None,
        help="calibration profile (`locmoe bench calibrate`): kernel per load and chunk count from the cost model",
    )
    p.add_argument(
        "--mode",
        default="auto",
        choices=["auto", "plain", "chunked", "pipelined"],
        help="expert execution; auto = pipelined with a profile or --chunks > 1, else plain",
    )
    p.add_argument("--chunks", type=int, default=0, help="fixed chunk count (0 = from the profile)")
    p.add_argument(
        "--kernel",
        default="auto",
        choices=["auto", "grouped", "dense"],
        help="expert kernel; auto = the cost model's choice per load (grouped without a profile)",
    )
    p.add_argument(
        "--capacity",
        default="dropless",
        choices=["dropless", "as_trained"],
        help="dropless serves every token; as_trained keeps the training capacity rule",
    )


def torch_server() -> Server:
    """The torch backend's serving (the one backend that serves; MindSpore's ``server()`` refuses)."""
    from typing import cast

    import backends
    from locmoe.backend_api import Serving

    return cast(Serving, backends.get("torch", "serving")).server()


def serving_options(server: Server, args: argparse.Namespace) -> object:
    """The options of ``add_serving_arguments``, checked: auto mode is pipelined with a profile or chunks."""
    mode = args.mode
    if mode == "auto":
        mode = "pipelined" if args.profile or args.chunks > 1 else "plain"
    return server.options(mode=mode, chunks=args.chunks, kernel=args.kernel, profile=args.profile)


def read_prompts(path: str) -> list[str]:
    from locmoe.text_files import read_text

    p = Path(path)
    prompts = [line for line in read_text(p, "--prompts", InferenceError).splitlines() if line.strip()]
    if not prompts:
        raise InferenceError(f"prompt file {p} holds no prompt (one per non-empty line)")
    return prompts


def check_domain(domain: int | None, router: str) -> None:
    """``--domain`` must be one of the model's domains (the export's, which match its checkpoint's): another id
    would route to an expert group the model does not have. Checked before the model loads and names its
    checkpoint, so that the refusal is one line."""
    if domain is None:
        return
    from locmoe.export.manifest import RouterManifest

    num_domains = RouterManifest.from_file(Path(router) / "manifest.json").domains["num_domains"]
    if not 0 <= domain < num_domains:
        raise InferenceError(
            f"--domain {domain} is not one of the model's domains: allowed 0 to {num_domains - 1} "
            f"(moe.domains.num_domains = {num_domains}), or leave --domain out"
        )


SEPARATOR = "-" * 40


def default_router(checkpoint: str) -> str:
    """RUN/router, where training exports the routers: RUN is CHECKPOINT itself (a run directory) or the run
    holding it (RUN/checkpoints/step_N)."""
    path = Path(checkpoint)
    run = path.parent.parent if path.parent.name == "checkpoints" else path
    if not (run / "router").is_dir():
        raise InferenceError(
            f"no router export at {run / 'router'} (the default ROUTER_DIR): pass one, or export it with "
            f"`locmoe export {checkpoint} {run / 'router'}`"
        )
    return str(run / "router")


def main(args: argparse.Namespace) -> int:
    from locmoe.checkpoint.directory import tokenizer_spec
    from locmoe.data import load_tokenizer

    server = torch_server()
    if args.max_new_tokens < 1:
        raise InferenceError(f"--max-new-tokens {args.max_new_tokens}; it must be >= 1")
    prompts = read_prompts(args.prompts)
    args.router = args.router or default_router(args.checkpoint)
    opts = serving_options(server, args)
    check_domain(args.domain, args.router)
    model = server.load(args.checkpoint, args.router, args.device, args.dtype, args.capacity, opts)
    tok = load_tokenizer(tokenizer_spec(model.cfg.data.tokenizer, model.checkpoint, Path(args.router)))
    ids = [tok.encode(p).tolist() for p in prompts]
    t0 = time.perf_counter()
    new, first_token_s = server.generate(
        model,
        ids,
        args.max_new_tokens,
        top_p=args.top_p,
        temperature=args.temperature,
        seed=args.seed,
        domain=args.domain,
        eos_id=args.eos_id,
        batch_size=args.batch_size,
        cuda_graph=args.cuda_graph,
        kv_cache=args.kv_cache,
    )
    seconds = time.perf_counter() - t0
    if args.kv_cache:
        assert first_token_s is not None, "the KV-cache path times its first token"
        how = f"KV cache, batches of {args.batch_size}, time to first token {first_token_s * 1e3:.0f} ms"
    else:
        how = "no cache"
    if model.rank == 0:
        for i, (prompt, out) in enumerate(zip(prompts, new)):
            if i:  # a continuation may hold newlines (or blank lines): a rule tells where the next prompt starts
                print(SEPARATOR)
            print(prompt + tok.decode(out))
        count = sum(len(x) for x in new)
        print(
            f"{len(prompts)} prompts, {count} new tokens in {seconds:.2f} s: {count / seconds:.1f} tokens/s ({how})",
            file=sys.stderr,
        )
    server.shutdown()
    return 0
