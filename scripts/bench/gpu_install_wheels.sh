#!/usr/bin/env bash
# Install the wheels the GPU machines lack (no network there) into a folder on PYTHONPATH, for the torchtitan
# row of train_throughput.py and locmoe train's tensorboard scalars. Source it, so PYTHONPATH stays set:
#   source scripts/bench/gpu_install_wheels.sh [WHEELS=.gpu_wheels] [TARGET=/tmp/site]
# The wheels (pure Python, no torch among them) are fetched where pip can reach a registry:
#   pip download --no-deps -d .gpu_wheels torchtitan==0.3.0 spmd_types==0.2.3 tyro docstring-parser typeguard tensorboardX
# (tyro 1.0's own needs are docstring-parser, typeguard and typing-extensions; the image has the last one.)
wheels="${1:-.gpu_wheels}"
target="${2:-/tmp/site}"
if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "gpu_install_wheels: no wheels in $wheels (the torchtitan row will say it was skipped)" >&2
    return 0 2>/dev/null || exit 0
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$wheels"/*.whl
export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
