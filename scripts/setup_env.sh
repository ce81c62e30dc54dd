#!/usr/bin/env bash
# Idempotent set-up of the project's virtual environment (default .venv, or $LOCMOE_VENV):
# a venv, torch==2.13.0 when no torch is present (a bare `torch` would pull a multi-GB CUDA build),
# then this package in editable mode with the extras in $LOCMOE_EXTRAS (default: torch,dev).
# Prints the venv's python path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LOCMOE_VENV:-.venv}"
EXTRAS="${LOCMOE_EXTRAS:-torch,dev}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "setup: installing torch==2.13.0 ..." >&2
    "$PY" -m pip install -q "torch==2.13.0" >&2
fi
stamp="$VENV/.locmoe-installed-$(cat setup.py | sha1sum | cut -c1-12)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
    echo "setup: installing locmoe[$EXTRAS] (editable) ..." >&2
    "$PY" -m pip install -q -e ".[$EXTRAS]" >&2
    touch "$stamp"
fi
echo "$PY"
