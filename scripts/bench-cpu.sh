#!/usr/bin/env bash
# Benchmark rrank generate against transformers generate on SmolLM2-135M (CPU, batch 1).
set -euo pipefail
cd "$(dirname "$0")/.."
py="$(scripts/venv.sh)"
model="$(scripts/get-smollm2.sh)"
cargo build --release --bins
exec "$py" scripts/bench_cpu.py "$model" "$@"
