"""``locmoe convert CHECKPOINT OUT_DIR [--to torch|mindspore]``: a checkpoint of one backend as the other's
(:mod:`locmoe.checkpoint.convert`, with each backend's checkpoint files from ``backends.get``).

A format-1 checkpoint (older locmoe) of the torch backend holds pickles: converting it needs
``--trust-checkpoint``, and ``--to torch`` then rewrites it in format 2 without conversion of the backend.
"""

from __future__ import annotations

import argparse

from locmoe.backend_api import CheckpointIO
from locmoe.checkpoint.convert import BACKENDS, ConvertError, check_out_dir, convert_checkpoint
from locmoe.checkpoint.directory import TRUST_FLAG, trust_legacy_checkpoints


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (out_dir/checkpoints/step_N) or a run's out_dir")
    p.add_argument("out_dir", help="run directory to write the converted checkpoint into (OUT_DIR/checkpoints/)")
    p.add_argument(
        "--to", choices=BACKENDS, default=None, help="target backend (default: the other one than the checkpoint's)"
    )
    p.add_argument(
        "--from",
        dest="source",
        choices=["checkpoint", "hf"],
        default="checkpoint",
        help="hf: CHECKPOINT is a Hugging Face Qwen2-MoE directory (`locmoe export --format hf`); "
        "safetensors only, never a pickle",
    )
    p.add_argument(
        TRUST_FLAG,
        dest="trust_checkpoint",
        action="store_true",
        help="read a format-1 checkpoint's pickles (older locmoe; only for files you trust), e.g. to "
        "rewrite one in today's format with --to of its own backend",
    )


def main(args: argparse.Namespace) -> int:
    if args.source == "hf":  # a Hugging Face directory (framework-free: locmoe.export.hf_import)
        from locmoe.export.hf_import import import_hf

        print(f"converted to {import_hf(args.checkpoint, args.out_dir)} (routers in {args.out_dir}/router)")
        return 0
    import backends

    check_out_dir(args.out_dir)  # one line before the frameworks load or the checkpoint is read
    for framework in BACKENDS:  # before reading anything: a conversion always reads one and writes the other
        backends.require(framework, "locmoe convert (it reads one backend's files and writes the other's)")
    if args.trust_checkpoint:
        trust_legacy_checkpoints(True)
    out = convert_checkpoint(args.checkpoint, args.out_dir, args.to, checkpoint_io=backend_checkpoint_io)
    print(f"converted to {out}")
    return 0


def backend_checkpoint_io(name: str) -> CheckpointIO:
    """Backend ``name``'s checkpoint files; a missing framework is a ConvertError naming the extra to install."""
    import backends

    try:
        return backends.get(name).checkpoint_io()
    except backends.BackendUnavailable as err:
        raise ConvertError(f"converting needs both frameworks: {err}") from None
