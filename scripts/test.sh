#!/usr/bin/env bash
# The test command: sets up the venv (torch 2.11 from PyPI), builds, runs the Rust
# tests (unit + integration, including the ones that need torch) and the Python
# compatibility suite against real torch and torchrun.
set -euo pipefail
cd "$(dirname "$0")/.."
py="$(scripts/venv.sh)"
cargo build --bins
RRUN_TEST_PYTHON="$py" cargo test -- --include-ignored
RRUN_BIN="$PWD/target/debug/rrun" "$py" -m pytest tests/python -q -p no:cacheprovider "$@"
