#!/usr/bin/env bash
# Style and layering: ruff's lint and format check (ruff.toml) and import-linter's layering contracts
# (.importlinter), with the tools of the test venv (scripts/setup_env.sh, dev extra; the same venv as
# scripts/test.sh). Exits non-zero on the first tool that finds something.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(LOCMOE_EXTRAS="torch,mindspore,dev,wandb,hf-data" bash scripts/setup_env.sh | tail -n 1)
BIN="$(dirname "$PY")"
"$BIN/ruff" check .
"$BIN/ruff" format --check --quiet .
"$BIN/lint-imports" --no-cache
