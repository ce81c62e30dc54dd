#!/usr/bin/env bash
# The main job on a fresh machine: sets up .venv, then shows the CLI and routes a demo batch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup_env.sh | tail -n 1)
export PATH="$(dirname "$PY"):$PATH"
locmoe --help
locmoe route-demo "$@"
