#!/usr/bin/env bash
# The whole test suite on a fresh machine: sets up .venv (torch CPU, MindSpore, test tools), then pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/routing -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(LOCMOE_EXTRAS="torch,mindspore,dev,wandb,hf-data" bash scripts/setup_env.sh | tail -n 1)
export PATH="$(dirname "$PY"):$PATH"   # msrun starts its workers with the first python on PATH
exec "$PY" -m pytest "${@:-tests}"
