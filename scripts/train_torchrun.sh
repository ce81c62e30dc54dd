#!/usr/bin/env bash
# Launch `locmoe train` under torchrun.
#   one node, all its GPUs:  scripts/train_torchrun.sh CONFIG [--nproc_per_node N] [-- --set k=v ...]
#   several nodes:           scripts/train_torchrun.sh CONFIG --nnodes 2 --node_rank R --master_addr HOST0 \
#                                [--master_port 29500] [--nproc_per_node 4] [-- --with FRAGMENT --set k=v ...]
# Arguments after `--` go to `locmoe train`. The topology (nodes x devices per node) comes from torchrun's
# environment unless the config fixes parallel.nodes / parallel.devices_per_node.
set -euo pipefail
usage() { sed -n 2,7p "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
CONFIG="$1"; shift    # a file (made absolute: we cd below) or a shipped config name (`locmoe configs`)
[ -e "$CONFIG" ] && CONFIG="$(realpath "$CONFIG")"
NNODES=1; NODE_RANK=0; MASTER_ADDR=127.0.0.1; MASTER_PORT=29500; NPROC=""
while [ $# -gt 0 ]; do
    case "$1" in
        --nnodes) NNODES="$2"; shift 2 ;;
        --node_rank) NODE_RANK="$2"; shift 2 ;;
        --master_addr) MASTER_ADDR="$2"; shift 2 ;;
        --master_port) MASTER_PORT="$2"; shift 2 ;;
        --nproc_per_node) NPROC="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "train_torchrun.sh: unknown option $1" >&2; usage ;;
    esac
done
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup_env.sh | tail -n 1)
export PATH="$(dirname "$PY"):$PATH"
if [ -z "$NPROC" ]; then   # every visible GPU, else one CPU process
    NPROC=$("$PY" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m locmoe.train "$CONFIG" "$@"
