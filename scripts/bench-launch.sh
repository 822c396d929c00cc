#!/usr/bin/env bash
# Benchmark rrun against torchrun (launch time, memory, store throughput) on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
py="$(scripts/venv.sh)"
cargo build --release --bins --examples
exec "$py" scripts/bench_launch.py "$@"
