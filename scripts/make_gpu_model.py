#!/usr/bin/env python3
"""Random-weight Llama checkpoints for GPU checks, made on the GPU machine (no downloads).

  make_gpu_model.py 8b OUT      Llama-3-8B shape (32 layers, 4096 hidden, GQA 32/8, vocab 128256,
                                llama3 rope), bf16, sharded safetensors, with the test models' small
                                tokenizer (so it can be served; its ids cover only the first 320 rows).
  make_gpu_model.py smoke OUT   a small Llama (4 layers, 768 hidden, 12 heads / 6 KV heads, so
                                TP 1, 2 and 3 are valid placements) with the test models' BPE
                                tokenizer and chat template, bf16: enough for the serving smoke test.

Weights are drawn on the GPU when one is there (seeded), then saved with save_pretrained.
"""
import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent


def config(kind):
    if kind == "8b":
        return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                           rms_norm_eps=1e-5, rope_theta=500000.0,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                           tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001)
    if kind == "smoke":
        return LlamaConfig(vocab_size=320, hidden_size=768, intermediate_size=3072, num_hidden_layers=4,
                           num_attention_heads=12, num_key_value_heads=6, max_position_embeddings=4096,
                           rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                           initializer_range=0.05, bos_token_id=0, eos_token_id=None)
    sys.exit(f"unknown kind {kind!r}: use 8b or smoke")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    kind, out = sys.argv[1], Path(sys.argv[2])
    if (out / "config.json").exists():
        print(f"{out} exists; kept")
        return
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = LlamaForCausalLM(config(kind))
    model.save_pretrained(out, max_shard_size="5GB")
    if True:  # the test models' tokenizer (ids below 320): enough to serve either model
        src = ROOT / "tests" / "data" / "llama"
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
            if (src / f).exists():
                shutil.copy(src / f, out / f)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
