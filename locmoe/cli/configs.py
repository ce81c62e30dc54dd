"""``locmoe configs [NAME]``: the shipped configs with their one-line descriptions, or one config's YAML.

A name works wherever a config file does: ``locmoe train tiny_cpu --with gshard``. To start your own job,
copy one: ``locmoe configs tiny_cpu > my_job.yaml``.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default=None, help="print this shipped config's YAML instead of the list")


def main(args: argparse.Namespace) -> int:
    from locmoe.config import ConfigError
    from locmoe.config.shipped import configs_dir, find_shipped, shipped_configs

    configs = shipped_configs()
    if args.name:
        path = find_shipped(args.name)
        if path is None:
            raise ConfigError(
                "", f"{args.name!r} names no shipped config; shipped: {', '.join(c.name for c in configs)}"
            )
        print(path.read_text(encoding="utf-8"), end="")
        return 0
    width = max(len(c.name) for c in configs)
    for kind, title in (("job", "jobs (locmoe train NAME)"), ("fragment", "fragments (--with NAME)")):
        print(title)
        for c in (c for c in configs if c.kind == kind):
            print(f"  {c.name:<{width}}  {c.description}")
    print(f"shipped in {configs_dir()}; `locmoe configs NAME` prints one (copy it to start your own job)")
    return 0
