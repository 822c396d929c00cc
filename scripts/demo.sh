#!/usr/bin/env bash
# The main job on a machine without GPUs: builds rrun, then runs a real PyTorch
# gloo job (all_reduce, broadcast, barrier, send/recv) on 4 local ranks with tee'd,
# prefixed output — exactly what `torchrun --nproc-per-node 4 -t 3 ...` would run.
set -euo pipefail
cd "$(dirname "$0")/.."
py="$(scripts/venv.sh)"
cargo build --release --bins
PYTHON_EXEC="$py" exec target/release/rrun --standalone --nproc-per-node 4 --tee 3 tests/python/workers/gloo_ops.py "$@"
