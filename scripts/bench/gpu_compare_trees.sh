#!/usr/bin/env bash
# A speed-regression check of one source tree against another, in one GPU visit: each tree (a `git archive`
# tarball) runs its own scripts/bench/train_throughput.py in rounds A B A B, so a slow spell of the machine
# lands on both trees alike; each round is a fresh process and a row per model (the bench's step and locmoe
# train's own loop, with its logging and validation). About 8 minutes on one H100.
#   git archive OLD -o .gpu_old.tar && git archive HEAD -o .gpu_new.tar
#   bash scripts/bench/gpu_compare_trees.sh OUT_DIR .gpu_old.tar .gpu_new.tar [ROWS] [ROUNDS]
# (device tool: carry both tarballs and .gpu_wheels; OUT_DIR=$OUT). Then
#   python scripts/bench/compare_trees.py OUT_DIR     prints the table and writes OUT_DIR/compare.json
set -uo pipefail
out="${1:?usage: gpu_compare_trees.sh OUT_DIR OLD.tar NEW.tar [ROWS] [ROUNDS]}"
old_tar="$(realpath "${2:?old tarball}")"
new_tar="$(realpath "${3:?new tarball}")"
rows="${4:-locmoe,gshard,dense}"
rounds="${5:-2}"
mkdir -p "$out"
out="$(realpath "$out")"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
start=$SECONDS
{
    source "$(dirname "$0")/gpu_install_wheels.sh" "$(dirname "$0")/../../.gpu_wheels" /tmp/site
    python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())'
    for tree in old new; do
        mkdir -p "/tmp/tree_$tree"
        tar -xf "$([ $tree = old ] && echo "$old_tar" || echo "$new_tar")" -C "/tmp/tree_$tree"
    done
    for round in $(seq 1 "$rounds"); do
        for tree in old new; do
            echo "=== round $round, $tree (at $((SECONDS - start))s)"
            (cd "/tmp/tree_$tree" && PYTHONPATH="$PWD:$PYTHONPATH" timeout 240 python3 scripts/bench/train_throughput.py \
                --rows "$rows" --steps 15 --warmup 5 --user-steps 40 --user-warmup 15 \
                --out "$out/${tree}_round${round}.json")
            echo "=== round $round, $tree: exit $? after $((SECONDS - start))s"
        done
    done
} 2>&1 | tee "$out/log.txt"
