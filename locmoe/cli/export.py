"""``locmoe export CHECKPOINT OUT_DIR [--format router|hf]``: the routers of a checkpoint for ``locmoe generate``
(:mod:`locmoe.export`), or the whole model as a transformers directory (:mod:`locmoe.export.hf_export`)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (train.out_dir/checkpoints/step_N) or a run's out_dir")
    p.add_argument("out_dir", help="where to write router.safetensors and manifest.json")
    p.add_argument(
        "--format",
        choices=["router", "hf"],
        default="router",
        help="router: the routers for `locmoe generate`; hf: the whole model as a transformers (Qwen2-MoE) directory",
    )


def main(args: argparse.Namespace) -> int:
    if getattr(args, "format", "router") == "hf":
        from locmoe.export.hf_export import export_hf

        print(f"exported the model for transformers (Qwen2-MoE) to {export_hf(args.checkpoint, args.out_dir)}")
        return 0
    from locmoe.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir)
    print(f"exported routers to {out}")
    return 0
