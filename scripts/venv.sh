#!/usr/bin/env bash
# Creates (once) the Python environment the tests and demos use, and prints its
# python. torch is pinned to 2.11.0: the version shared/spec/torchrun.md describes
# and the GPU machines run. RRUN_VENV overrides the location (default .venv).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${RRUN_VENV:-$root/.venv}"
want_torch="2.11.0"
if ! "$venv/bin/python" -c "import torch, pytest, sys; sys.exit(torch.__version__.split('+')[0] != '$want_torch')" 2>/dev/null; then
  echo "setting up $venv (torch==$want_torch, pytest) ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip >&2
  "$venv/bin/pip" install --quiet "torch==$want_torch" pytest >&2
fi
echo "$venv/bin/python"
