#!/usr/bin/env bash
# The main job on a fresh machine: set up the venv (.venv, or $LOCMOE_VENV; torch CPU and this package, no
# MindSpore), then pretrain the tiny PanGu-Sigma-style MoE model with the LocMoE router on CPU (the shipped
# config tiny_cpu: one process emulating 2 nodes x 2 devices, a few minutes on 2 cores), writing tensorboard
# events, checkpoints and the exported router under runs/tiny_cpu (or $LOCMOE_OUT).
# Extra arguments go to `locmoe train`, e.g. `bash scripts/main.sh --set train.steps=50`.
# Run it again after an interruption and it resumes from the newest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(LOCMOE_EXTRAS="${LOCMOE_EXTRAS:-torch}" bash scripts/setup_env.sh | tail -n 1)
export PATH="$(dirname "$PY"):$PATH"
OUT="${LOCMOE_OUT:-runs/tiny_cpu}"
RESUME=()
if compgen -G "$OUT/checkpoints/step_*" > /dev/null; then
    echo "main: $OUT already holds checkpoints: resuming (delete it to train from scratch)"
    RESUME=(--resume)
fi
locmoe train tiny_cpu --set "train.out_dir=$OUT" "${RESUME[@]}" "$@"
"$PY" - "$OUT" <<'PYEOF'
import json, math, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
val = [r for r in rows if "val_loss" in r]
if val:
    print(f"main: validation loss {val[-1]['val_loss']:.3f} at step {val[-1]['step']} "
          f"(uniform-byte baseline ln 256 = {math.log(256):.3f})")
print(f"main: tensorboard events in {out}/tb, checkpoints in {out}/checkpoints, exported router in {out}/router")
PYEOF
