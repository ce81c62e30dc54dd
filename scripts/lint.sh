#!/usr/bin/env bash
# Style, layering and types: ruff's lint and format check (ruff.toml), import-linter's layering contracts
# (.importlinter) and pyright's basic type check (pyrightconfig.json), with the tools of the test venv
# (scripts/setup_env.sh, dev extra; the same venv as scripts/test.sh). Exits non-zero on the first tool that
# finds something. .pre-commit-config.yaml runs the same tools before each commit (`pre-commit install`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(LOCMOE_EXTRAS="torch,mindspore,dev,wandb,hf-data" bash scripts/setup_env.sh | tail -n 1)
BIN="$(dirname "$PY")"
"$BIN/ruff" check .
"$BIN/ruff" format --check --quiet .
"$BIN/lint-imports" --no-cache
"$BIN/pyright" --pythonpath "$PY"  # the venv setup_env.sh made (LOCMOE_VENV), not only .venv
