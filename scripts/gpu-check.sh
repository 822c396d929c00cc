#!/usr/bin/env bash
# Developers' GPU check: the CUDA backend against transformers on the same weights (see
# scripts/gpu_check.py for the list). Run on a GPU machine whose python3 has torch and
# transformers. Usage: scripts/gpu-check.sh [--bin DIR_WITH_rrun_AND_rrank] [--only tiny,8b,...]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/gpu_check.py "$@"
