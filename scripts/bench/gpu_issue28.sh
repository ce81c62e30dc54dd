#!/usr/bin/env bash
# Issue 28's benchmark figures in one GPU visit (one GPU, about 8 minutes; each stage has its own time limit,
# so one that hangs costs only its own share; train_throughput writes its JSON after every row):
#   bash scripts/bench/gpu_issue28.sh OUT_DIR [speed|table|profile|lockstep]   (device tool: carry .gpu_wheels,
#   OUT_DIR=$OUT)
# speed (the default, about 8 minutes): stages 1-4 below. table (about 3 minutes): stage 2 alone. profile
# (about 6 minutes, another visit): the fast path's bf16 loss curve against the eager path's over 100 steps
# (issue 28's acceptance) and against a second eager run (the spread of bf16 training itself), and where a
# LocMoE step's and the dense twin's device time goes (torch.profiler, train_phases.py). lockstep (about 6
# minutes): the fast path against eager over 100 steps, each step from the eager path's state, and eager
# against eager for the floor (fast_vs_eager_lockstep.py): LocMoE, GShard and the dense twin.
# 1. the wheels torchtitan needs (scripts/bench/gpu_install_wheels.sh; without them the torchtitan rows say
#    they were skipped);
# 2. train_throughput.py: LocMoE, GShard, the dense twin and torchtitan's Qwen3-MoE, each timed back to back
#    and (ours) on locmoe train's own loop with logging, validation and checkpoints on;
# 3. the same MoE rows with --force-balance (every token round-robin, as Megatron and torchtitan quote);
# 4. moe_layer.py at Megatron-Core's Mixtral-proxy shape (forced balance, beside its 481 TFLOP/s) and at ours.
# Everything lands in OUT_DIR: one JSON per stage and log.txt.
set -uo pipefail
out="${1:?usage: gpu_issue28.sh OUT_DIR [speed|profile]}"
part="${2:-speed}"
cd "$(dirname "$0")/../.."
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS
stage() {  # stage LIMIT_S NAME COMMAND...: run with a time limit, log it, never stop the script
    local limit=$1 name=$2
    shift 2
    echo "=== $name (limit ${limit}s, at $((SECONDS - start))s)"
    timeout "$limit" "$@"
    echo "=== $name: exit $? after $((SECONDS - start))s"
}
{
    source scripts/bench/gpu_install_wheels.sh .gpu_wheels /tmp/site
    python3 -c 'import torch, sys; print(torch.__version__, torch.cuda.get_device_name(), sys.version.split()[0])'
    python3 -c 'import torchtitan; print("torchtitan importable")' || true
    if [ "$part" = lockstep ]; then
        for row in locmoe gshard dense; do
            stage 200 "fast_vs_eager_lockstep ($row)" python3 scripts/bench/fast_vs_eager_lockstep.py --row "$row" \
                --steps 100 --out "$out/lockstep_$row.json"
        done
    elif [ "$part" = profile ]; then
        # the fast path against eager, eager again (the run-to-run spread of bf16 training itself) and the
        # compiled step without its CUDA graph; the dense twin against eager
        stage 200 "train_throughput --curve 100 (locmoe)" python3 scripts/bench/train_throughput.py \
            --rows locmoe --steps 5 --warmup 3 --user-steps 0 --curve 100 \
            --curve-against eager,eager,nograph --out "$out/train_curves.json"
        # phases need the eager step: a CUDA graph's replay hides the profiler's ranges
        stage 150 "train_throughput --profile" python3 scripts/bench/train_throughput.py \
            --rows locmoe-nograph,dense-nograph --steps 10 --warmup 5 --user-steps 0 --profile \
            --out "$out/train_profile.json"
        stage 100 "train_throughput --curve 100 (dense)" python3 scripts/bench/train_throughput.py \
            --rows dense --steps 5 --warmup 3 --user-steps 0 --curve 100 --out "$out/train_curves_dense.json"
    else
        common=(--steps 15 --warmup 5 --user-steps 100)
        stage 210 "train_throughput" python3 scripts/bench/train_throughput.py "${common[@]}" \
            --rows locmoe,gshard,dense,torchtitan --out "$out/train_throughput.json"
        [ "$part" = table ] && { echo "=== done after $((SECONDS - start))s"; exit 0; }
        stage 150 "train_throughput --force-balance" python3 scripts/bench/train_throughput.py "${common[@]}" \
            --force-balance --rows locmoe,gshard,torchtitan --out "$out/train_throughput_forced.json"
        stage 50 "moe_layer --shape megatron" python3 scripts/bench/moe_layer.py --shape megatron \
            --out "$out/moe_layer_megatron.json"
        stage 50 "moe_layer (ours, forced balance)" python3 scripts/bench/moe_layer.py --force-balance \
            --out "$out/moe_layer_ours_forced.json"
    fi
    echo "=== done after $((SECONDS - start))s"
} 2>&1 | tee "$out/log.txt"
