"""``locmoe plan``: placement and deployment planning (filled in by the planning work)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["affinity", "place", "replicate", "deploy", "simulate"])


def main(args: argparse.Namespace) -> int:
    raise SystemExit(f"locmoe plan {args.what}: not available in this build yet")
