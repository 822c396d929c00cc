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

Two smaller models cover the config.json fields that change the math:
  llama-gelu    hidden_act gelu_pytorch_tanh, attention_bias and mlp_bias (random, non-zero
                biases), head_dim != hidden_size / heads, rms_norm_eps 1e-3
  qwen2-window  use_sliding_window with sliding_window 4 < the 16-token prompt and
                max_window_layers 1 (layer 0 full, layers 1-3 sliding); its config.json
                is saved without layer_types, so the reader must derive them
A variant is the same weights under a config.json with a few fields changed:
reference-NAME.json holds the edits ("config_edits") and transformers' outputs under
them; every variant's logits differ from its model's by more than 1e-3 (ten times the
tests' tolerance), so a reader that ignores the edited fields fails its test.

Usage: scripts/make-test-model.py [OUT_DIR [NAME ...]]   (needs torch, transformers, tokenizers)
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config,
                          PreTrainedTokenizerFast)

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "tests" / "data"
ONLY = set(sys.argv[2:])
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


def gelu_tweak(model):
    """Random non-zero biases (the initialiser zeroes them); gate_proj x2, so gate values reach
    the |x| ~ 1-3 where erf and tanh GELU differ most (5e-4); final norm x10, so logits of
    ~20 carry that difference as ~5e-3, well above the tests' 1e-4."""
    for n, p in model.named_parameters():
        if n.endswith(".bias"):
            p.normal_(0.0, model.config.initializer_range)
        if "gate_proj.weight" in n:
            p.mul_(2.0)
        if n == "model.norm.weight":
            p.mul_(10.0)


def configs():
    """name -> (config, dtype, max shard size, variants {NAME: config edits}, keys dropped from config.json,
    a change to the initialised weights or None)."""
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, vocab_size=VOCAB,
                  max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.1,
                  bos_token_id=0, eos_token_id=None, pad_token_id=None)
    small = dict(common, hidden_size=32, intermediate_size=64)
    return {
        # 8 heads / 4 KV heads: KV split at TP 2 and 4; llama3 rope scaling; tied embeddings.
        "llama": (LlamaConfig(num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True,
                              rope_theta=10000.0,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                              **common), torch.bfloat16, None, {}, [], None),
        # 8 heads / 2 KV heads: KV replicated at TP 4; untied lm_head. Variant: a sliding window of 6
        # (Mistral applies it to every layer; 6 keeps seed 0's greedy margin clear).
        "mistral": (MistralConfig(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
                                  sliding_window=None, rope_theta=10000.0, **common), torch.float16, None,
                    {"window": {"sliding_window": 6}}, [], None),
        # 4 heads / 1 KV head: replicated at TP 2 and 4; q/k/v biases; sharded checkpoint.
        "qwen2": (Qwen2Config(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
                              rope_theta=1000000.0, use_sliding_window=False, **common), torch.float32, "100KB",
                  {}, [], None),
        # 4 heads of 16 (64 != hidden 32) / 2 KV heads, tanh GELU, every bias. Variants: erf GELU, and
        # linear RoPE scaling. gelu_tweak makes the two GELUs' difference show in the logits.
        "llama-gelu": (LlamaConfig(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   hidden_act="gelu_pytorch_tanh", attention_bias=True, mlp_bias=True,
                                   tie_word_embeddings=True, rope_theta=10000.0,
                                   **dict(small, num_hidden_layers=2, rms_norm_eps=1e-3)),
                       torch.bfloat16, None,
                       {"gelu": {"hidden_act": "gelu"},
                        "rope-linear": {"rope_parameters": {"rope_type": "linear", "factor": 4.0,
                                                            "rope_theta": 10000.0}}},
                       [], gelu_tweak),
        # Sliding window 4 from layer max_window_layers = 1 on (config.json without layer_types).
        # Variant: explicit layer_types in another pattern.
        "qwen2-window": (Qwen2Config(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                     rope_theta=10000.0, use_sliding_window=True, sliding_window=4,
                                     max_window_layers=1, **small), torch.bfloat16, None,
                         {"layer-types": {"layer_types": ["sliding_attention", "full_attention",
                                                          "full_attention", "sliding_attention"]}},
                         ["layer_types"], None),
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


def edit_config(d, edits):
    c = json.loads((d / "config.json").read_text())
    c.update(edits)
    (d / "config.json").write_text(json.dumps(c, indent=2) + "\n")


def variant_reference(d, edits, prompt_ids):
    """transformers' outputs for the weights of `d` under config.json with `edits`."""
    with tempfile.TemporaryDirectory() as tmp:
        v = Path(tmp) / "m"
        shutil.copytree(d, v)
        edit_config(v, edits)
        return reference(v, prompt_ids)


def max_diff(a, b):
    return (a - b).abs().max().item()


def main():
    tok = tokenizer()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (cfg, dtype, shard, variants, drop, tweak) in configs().items():
        if ONLY and name not in ONLY:
            continue
        d = OUT / name
        for seed in range(100):
            shutil.rmtree(d, ignore_errors=True)
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
            if tweak:
                with torch.no_grad():
                    tweak(model)
            model = model.to(dtype)
            kw = {"max_shard_size": shard} if shard else {}
            model.save_pretrained(d, **kw)
            if drop:
                c = json.loads((d / "config.json").read_text())
                for k in drop:
                    c.pop(k, None)
                (d / "config.json").write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")
            fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
            fast.chat_template = CHATML
            fast.save_pretrained(d)
            prompt_ids = tok.encode(PROMPT).ids
            logits, greedy, margin = reference(d, prompt_ids)
            refs = {v: variant_reference(d, e, prompt_ids) for v, e in variants.items()}
            if margin > 5e-3 and all(r[2] > 5e-3 for r in refs.values()):
                break
        (d / "reference.json").write_text(json.dumps({
            "prompt": PROMPT, "prompt_ids": prompt_ids, "seed": seed, "min_greedy_margin": margin,
            "logits": [[float(f"{v:.7g}") for v in row] for row in logits.tolist()], "greedy": greedy,
        }))
        for v, (vl, vg, vm) in refs.items():
            diff = max_diff(vl, logits)
            assert diff > 1e-3, f"{name} variant {v}: logits within {diff} of the base model's"
            (d / f"reference-{v}.json").write_text(json.dumps({
                "prompt": PROMPT, "prompt_ids": prompt_ids, "seed": seed, "config_edits": variants[v],
                "min_greedy_margin": vm, "max_logit_diff_to_base": diff,
                "logits": [[float(f"{x:.7g}") for x in row] for row in vl.tolist()], "greedy": vg,
            }))
            print(f"{name} variant {v}: margin {vm:.4f}, max |logit diff| to the base model {diff:.3f}")
        files = sorted(p.name for p in d.iterdir())
        print(f"{name}: seed {seed}, dtype {dtype}, margin {margin:.4f}, {len(prompt_ids)} prompt ids, files {files}")


if __name__ == "__main__":
    main()
