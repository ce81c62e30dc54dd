"""``locmoe bench``: device calibration and throughput benchmarks (filled in by the inference work)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["calibrate", "prefill"])


def main(args: argparse.Namespace) -> int:
    raise SystemExit(f"locmoe bench {args.what}: not available in this build yet")
