#!/usr/bin/env bash
# Tensor-parallel scaling runs on the GPU machine: 8B- and 70B-shaped random checkpoints at every
# placement the GPUs allow (TP 1/2/4/8, PP 2 x TP 4), batch-1 decode and 256 concurrent requests;
# a markdown table, JSON and a PNG. See scripts/bench_scaling.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/bench_scaling.py "$@"
