"""``locmoe data prepare SOURCES... --out PREFIX``: tokenise once into an indexed dataset; training then reads
PREFIX (``data.sources: [{path: PREFIX}]``) a window at a time, without re-tokenising."""

from __future__ import annotations

import argparse
import os

from locmoe.cli.args import int_at_least


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = sub.add_parser(
        "prepare",
        help="tokenise text/jsonl/parquet/arrow/datasets sources once into PREFIX.bin + PREFIX.idx",
        description="Tokenise text/jsonl/parquet/arrow/datasets sources once into an indexed dataset (Megatron's "
        "MMapIndexedDataset layout, plus a PREFIX.locmoe.json sidecar). Train on it with "
        "data.sources=[{path: PREFIX}].",
    )
    q.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="text, jsonl, parquet or arrow files, datasets save_to_disk folders, or folders of them",
    )
    q.add_argument(
        "--out",
        required=True,
        metavar="PREFIX",
        help="writes PREFIX.bin, PREFIX.idx and PREFIX.locmoe.json (the folder must exist)",
    )
    q.add_argument(
        "--tokenizer",
        default="byte",
        metavar="byte|FILE.json|FOLDER",
        help="byte, a tokenizers JSON file, or a Hugging Face tokenizer folder; training must use the same "
        "(default: %(default)s)",
    )
    q.add_argument(
        "--workers",
        type=int_at_least(1),
        default=min(4, os.cpu_count() or 1),
        metavar="N",
        help="tokenising processes (default: %(default)s)",
    )
    q.add_argument(
        "--domain",
        type=int_at_least(0),
        default=0,
        help="domain of text files and of jsonl rows without one, below 128 (default: %(default)s)",
    )
    q.add_argument(
        "--format",
        choices=("auto", "text", "jsonl", "parquet", "arrow", "datasets"),
        default="auto",
        help="format of the sources; auto = by extension (.jsonl, .parquet, .arrow; a save_to_disk "
        "folder is datasets) or text (default: %(default)s)",
    )
    q.add_argument("--overwrite", action="store_true", help="replace an existing PREFIX.bin/.idx")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from locmoe.data.prepare import prepare

    meta = prepare(
        args.sources,
        args.out,
        args.tokenizer,
        args.workers,
        args.domain,
        args.format,
        args.overwrite,
        progress=not args.no_progress,
    )
    per_domain = ", ".join(f"{d}: {v['documents']} docs / {v['tokens']} tokens" for d, v in meta["domains"].items())
    print(
        f"prepared {args.out}.bin/.idx: {meta['documents']} documents, {meta['tokens']} tokens, dtype "
        f"{meta['dtype']}, largest id {meta['max_token']} (vocabulary {meta['vocab_size']}, tokenizer "
        f"{meta['tokenizer_name']}); domains {{{per_domain}}}; {meta['seconds']:.1f}s"
    )
    return 0
