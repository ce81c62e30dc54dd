#!/usr/bin/env bash
# The whole test suite on a fresh machine: sets up .venv (torch CPU, MindSpore, test tools), then pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/routing -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(LOCMOE_EXTRAS="torch,mindspore,dev,wandb,hf-data" bash scripts/setup_env.sh | tail -n 1)
export PATH="$(dirname "$PY"):$PATH"   # msrun starts its workers with the first python on PATH
# 2 workers (pytest-xdist), a file (or a folder sharing session fixtures) to a worker, the slowest dealt first:
# tests/conftest.py sets the groups and the order. `-n 0` after these runs in one process.
exec "$PY" -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=20 "${@:-tests}"
