#!/usr/bin/env bash
# Creates (once) the Python environment the tests and demos use, and prints its
# python. torch is pinned to 2.11.0: the version docs/spec/torchrun.md describes
# and the GPU machines run; transformers 5.17 likewise (the numerical reference). RRUN_VENV overrides the location (default .venv).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${RRUN_VENV:-$root/.venv}"
want_torch="2.11.0"
want_tf="5.17.0"
want_llmc="0.14.0.1"
if ! "$venv/bin/python" -c "import torch, transformers, gguf, accelerate, openai, pytest, sys, importlib.metadata as md; sys.exit(torch.__version__.split('+')[0] != '$want_torch' or transformers.__version__ != '$want_tf' or md.version('llmcompressor') != '$want_llmc')" 2>/dev/null; then
  echo "setting up $venv (torch==$want_torch, transformers==$want_tf, llmcompressor==$want_llmc, gguf, accelerate, openai, pytest) ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip >&2
  "$venv/bin/pip" install --quiet "torch==$want_torch" "transformers==$want_tf" "llmcompressor==$want_llmc" gguf accelerate openai pytest >&2
fi
echo "$venv/bin/python"
