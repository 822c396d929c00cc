#!/usr/bin/env python3
"""Writes the tiny test checkpoints under tests/data/ (committed), with transformers'
reference outputs.

For each architecture: random weights (seeded) saved with save_pretrained in a
chosen dtype, a small real BPE tokenizer trained here, a ChatML chat template, and
reference.json = {prompt_ids, logits (every prompt position, float32 forward of the
saved weights), greedy (32 tokens from generate)}. Head counts are chosen so TP 1/2/4
and PP 2 are all valid, with KV heads split (llama), replicated at TP 4 (mistral) and
replicated at TP 2 and 4 (qwen2, one KV head). Seeds are retried until every greedy
step wins by a clear margin, so the greedy test checks the model, not rounding.

Usage: scripts/make-test-model.py [OUT_DIR]   (needs torch, transformers, tokenizers)
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config,
                          PreTrainedTokenizerFast)

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "tests" / "data"
VOCAB = 320
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CORPUS = """The capital of France is Paris. The capital of Italy is Rome. Rust is a systems
programming language. Tensor parallelism splits every layer across devices; pipeline parallelism
splits the layers into stages. A launcher starts one process per device and supervises them.
What is the capital of Germany? Berlin is the capital of Germany. Hello world, hello ranks.
""" * 20
PROMPT = "What is the capital of France? The capital"


def tokenizer():
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    assert tok.get_vocab_size() <= VOCAB
    return tok


def configs():
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, vocab_size=VOCAB,
                  max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.1,
                  bos_token_id=0, eos_token_id=None, pad_token_id=None)
    return {
        # 8 heads / 4 KV heads: KV split at TP 2 and 4; llama3 rope scaling; tied embeddings.
        "llama": (LlamaConfig(num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True,
                              rope_theta=10000.0,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                              **common), torch.bfloat16, None),
        # 8 heads / 2 KV heads: KV replicated at TP 4; untied lm_head.
        "mistral": (MistralConfig(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
                                  sliding_window=None, rope_theta=10000.0, **common), torch.float16, None),
        # 4 heads / 1 KV head: replicated at TP 2 and 4; q/k/v biases; sharded checkpoint.
        "qwen2": (Qwen2Config(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
                              rope_theta=1000000.0, use_sliding_window=False, **common), torch.float32, "100KB"),
    }


def reference(path, prompt_ids):
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        logits = m(ids).logits[0]
        gen = m.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
        greedy = gen[0, len(prompt_ids):].tolist()
        # Margin of every greedy choice (teacher-forced on the generated text).
        full = m(gen).logits[0, len(prompt_ids) - 1:-1]
        top2 = full.topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]).min().item()
    return logits, greedy, margin


def main():
    tok = tokenizer()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (cfg, dtype, shard) in configs().items():
        d = OUT / name
        for seed in range(100):
            shutil.rmtree(d, ignore_errors=True)
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
            model = model.to(dtype)
            kw = {"max_shard_size": shard} if shard else {}
            model.save_pretrained(d, **kw)
            fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
            fast.chat_template = CHATML
            fast.save_pretrained(d)
            prompt_ids = tok.encode(PROMPT).ids
            logits, greedy, margin = reference(d, prompt_ids)
            if margin > 5e-3:
                break
        (d / "reference.json").write_text(json.dumps({
            "prompt": PROMPT, "prompt_ids": prompt_ids, "seed": seed, "min_greedy_margin": margin,
            "logits": [[float(f"{v:.7g}") for v in row] for row in logits.tolist()], "greedy": greedy,
        }))
        files = sorted(p.name for p in d.iterdir())
        print(f"{name}: seed {seed}, dtype {dtype}, margin {margin:.4f}, {len(prompt_ids)} prompt ids, files {files}")


if __name__ == "__main__":
    main()
