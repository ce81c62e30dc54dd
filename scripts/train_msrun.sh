#!/usr/bin/env bash
# Launch `locmoe train` under MindSpore's msrun (the config should say parallel.backend: mindspore).
#   one node:        scripts/train_msrun.sh CONFIG [--worker_num 8] [--local_worker_num 8] [-- --set k=v ...]
#   several nodes:   scripts/train_msrun.sh CONFIG --worker_num 16 --local_worker_num 8 --node_rank R \
#                        --master_addr HOST0 [--master_port 8118] [--log_dir DIR] [-- --set k=v ...]
# Run the same command on every node with its own --node_rank. Arguments after `--` go to `locmoe train`.
# The topology is worker_num / local_worker_num nodes x local_worker_num devices unless the config fixes
# parallel.nodes / parallel.devices_per_node (e.g. 4 CPU workers on one host as 2 nodes x 2).
set -euo pipefail
usage() { sed -n 2,8p "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
CONFIG="$1"; shift    # a file (made absolute: we cd below) or a shipped config name (`locmoe configs`)
[ -e "$CONFIG" ] && CONFIG="$(realpath "$CONFIG")"
WORKERS=""; LOCAL=""; NODE_RANK=0; MASTER_ADDR=127.0.0.1; MASTER_PORT=8118; LOG_DIR=msrun_log
while [ $# -gt 0 ]; do
    case "$1" in
        --worker_num) WORKERS="$2"; shift 2 ;;
        --local_worker_num) LOCAL="$2"; shift 2 ;;
        --node_rank) NODE_RANK="$2"; shift 2 ;;
        --master_addr) MASTER_ADDR="$2"; shift 2 ;;
        --master_port) MASTER_PORT="$2"; shift 2 ;;
        --log_dir) LOG_DIR="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "train_msrun.sh: unknown option $1" >&2; usage ;;
    esac
done
cd "$(dirname "$0")/.."
PY="${LOCMOE_PYTHON:-}"
if [ -z "$PY" ]; then
    PY=$(LOCMOE_EXTRAS="mindspore,dev" bash scripts/setup_env.sh | tail -n 1)
fi
export PATH="$(dirname "$PY"):$PATH"     # msrun starts its workers with the first python on PATH
WORKERS="${WORKERS:-${LOCAL:-1}}"
LOCAL="${LOCAL:-$WORKERS}"
if [ $((WORKERS % LOCAL)) -ne 0 ]; then
    echo "train_msrun.sh: --worker_num $WORKERS must be a multiple of --local_worker_num $LOCAL" >&2; exit 2
fi
export MS_LOCAL_WORKER_NUM="$LOCAL"      # ranks per node, read by locmoe.parallel.topology.LaunchEnv
exec msrun --worker_num "$WORKERS" --local_worker_num "$LOCAL" --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --log_dir "$LOG_DIR" --join True \
    scripts/locmoe_entry.py train "$CONFIG" "$@"
