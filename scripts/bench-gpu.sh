#!/usr/bin/env bash
# GPU serving benchmark: cold start, batch-1 decode, TTFT and throughput at 1/16/64/256
# concurrent requests for each -tp, optionally with transformers as the peer (--peers).
# Run on the GPU machine (python3 with torch and transformers). See scripts/bench_gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/bench_gpu.py "$@"
