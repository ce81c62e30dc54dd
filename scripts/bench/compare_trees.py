"""The table of a tree-against-tree speed check (``gpu_compare_trees.sh``): per model, each tree's median
over its rounds of the bench's step tokens/s and of ``locmoe train``'s own loop, and the change new / old.

    python scripts/bench/compare_trees.py DIR [--out DIR/compare.json]

DIR holds ``old_round*.json`` and ``new_round*.json`` (``train_throughput.py``'s JSON). The per-round ratios
are listed too: new against the old run of the same round, which ran just before it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from locmoe.report import format_table, write_json  # noqa: E402

METRICS = {"bench": "tokens_per_s", "locmoe train": "user_tokens_per_s"}


def load_rounds(folder: Path, tree: str) -> list[dict]:
    """Each round's rows by name: [{row: {...}}, ...] in round order."""
    files = sorted(folder.glob(f"{tree}_round*.json"), key=lambda p: int(p.stem.split("round")[1]))
    return [{r["row"]: r for r in json.loads(p.read_text())["rows"]} for p in files]


def compare(old: list[dict], new: list[dict]) -> list[dict]:
    table = []
    for row in old[0] if old else []:
        for path, key in METRICS.items():
            a = [r[row][key] for r in old if row in r and r[row].get(key)]
            b = [r[row][key] for r in new if row in r and r[row].get(key)]
            if not a or not b:
                continue
            per_round = [nb / na for na, nb in zip(a, b)]
            table.append(
                {
                    "row": row,
                    "path": path,
                    "old tokens/s": statistics.median(a),
                    "new tokens/s": statistics.median(b),
                    "change %": 100 * (statistics.median(b) / statistics.median(a) - 1),
                    "per round %": ", ".join(f"{100 * (x - 1):+.1f}" for x in per_round),
                    "graph old/new": f"{old[0][row].get('graph', '?')}/{new[0][row].get('graph', '?')}",
                }
            )
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("dir")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    folder = Path(args.dir)
    old, new = load_rounds(folder, "old"), load_rounds(folder, "new")
    if not old or not new:
        sys.exit(f"compare_trees: {folder} holds no old_round*.json or no new_round*.json")
    table = compare(old, new)
    first = json.loads(next(folder.glob("old_round*.json")).read_text())
    print(f"{first.get('device', '?')}, torch {first.get('torch', '?')}, {len(old)} rounds old, {len(new)} new")
    print(format_table(table, floatfmt=".4g"))
    write_json(
        args.out or folder / "compare.json",
        {"device": first.get("device"), "torch": first.get("torch"), "rounds": len(old), "rows": table},
    )


if __name__ == "__main__":
    main()
