"""Under torchrun: train several jobs one after another in the same processes (one start-up of torch and the
process group for all of them; ``locmoe train`` would pay it per job). argv: a JSON file of
[{"config": path, "set": [overrides], "resume": bool}, ...]."""

import json
import sys

import backends
from locmoe.config import load_config


def main(cases_file: str) -> None:
    with open(cases_file, encoding="utf-8") as f:
        cases = json.load(f)
    for case in cases:
        cfg = load_config(case["config"], case["set"])
        backends.get("torch").pretrain(cfg, resume=case.get("resume", False))


if __name__ == "__main__":
    main(sys.argv[1])
