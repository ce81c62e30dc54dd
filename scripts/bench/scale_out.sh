#!/usr/bin/env bash
# Scale-out run: 8 GPUs as 2 nodes x 4 (issue 8). Each stage fits the device tool's 10-minute command limit;
# run them in order on one 8-GPU machine, then `table` prints the summary and writes bench_results/scale_out.json.
#   bash scripts/bench/scale_out.sh layer                 MoE layer: hierarchical vs flat all-to-all vs raw NCCL
#   bash scripts/bench/scale_out.sh train ROUTER DATA     200 steps of pangu_sigma_1b (grad_accum 1) with ROUTER
#   bash scripts/bench/scale_out.sh simulate              the cluster simulator's prediction for 2 x 4
#   bash scripts/bench/scale_out.sh table                 measured step times against the prediction
# NVLink multicast stays off in every process (see the device notes).
set -euo pipefail
cd "$(dirname "$0")/../.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=bench_results/scale_out
mkdir -p "$OUT"
case "${1:-}" in
    layer)
        python scripts/bench/moe_layer.py --nodes 2 --out "$OUT/moe_layer.json" ;;
    train)
        python scripts/bench/router_compare.py --job pangu_sigma_1b --nproc 8 --steps 200 --routers "$2" \
            --data "$3" --work "$OUT/runs" --out "$OUT/train_$2.json" ;;
    simulate)
        python -m locmoe plan simulate --nodes 2 --devices-per-node 4 --experts 16 --d-model 2048 --d-expert 1024 \
            --layers 6 --tokens-per-device 8192 --json "$OUT/simulate.json" ;;
    table)
        python - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
sim = json.loads((out / "simulate.json").read_text())
rows = [json.loads(p.read_text())["rows"][0] for p in sorted(out.glob("train_*.json"))]
print(json.dumps({"measured": rows, "simulated": sim}, indent=1))
(out.parent / "scale_out.json").write_text(json.dumps({"measured": rows, "simulated": sim}, indent=1))
PYEOF
        ;;
    *) sed -n 2,8p "$0"; exit 2 ;;
esac
