#!/usr/bin/env python3
"""Random-weight Llama checkpoints for GPU checks, made on the GPU machine (no downloads).

  make_gpu_model.py 8b OUT      Llama-3-8B shape (32 layers, 4096 hidden, GQA 32/8, vocab 128256,
                                llama3 rope), bf16, sharded safetensors, with a word-level tokenizer
                                over the whole vocabulary (id i is the word "w<i>"), so every generated
                                id is visible text when served (benchmarks time the first token by it).
  make_gpu_model.py 70b OUT     Llama-3-70B shape (80 layers, 8192 hidden, GQA 64/8, 28672 inter), same.
  make_gpu_model.py smoke OUT   a small Llama (4 layers, 768 hidden, 12 heads / 6 KV heads, so
                                TP 1, 2 and 3 are valid placements) with the test models' BPE
                                tokenizer and chat template, bf16: enough for the serving smoke test.
  make_gpu_model.py shape:HD:HEADS:KV OUT
                                a 2-layer Llama with that head_dim and query / KV head counts (512
                                hidden, vocab 320, the smoke model's tokenizer), bf16: exercises the
                                attention kernels' variants (gpu_check.py --only shapes).

Weights are drawn on the GPU when one is there (seeded), then saved with save_pretrained.
"""
import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent


def llama3(**shape):
    """A Llama-3 configuration (llama3 RoPE scaling, 128k vocabulary) of the given shape."""
    return LlamaConfig(vocab_size=128256, num_key_value_heads=8, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_theta=500000.0,
                       rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                       tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001, **shape)


def config(kind):
    if kind == "8b":
        return llama3(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32)
    if kind == "70b":
        return llama3(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64)
    if kind == "smoke":
        return LlamaConfig(vocab_size=320, hidden_size=768, intermediate_size=3072, num_hidden_layers=4,
                           num_attention_heads=12, num_key_value_heads=6, max_position_embeddings=4096,
                           rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                           initializer_range=0.05, bos_token_id=0, eos_token_id=None)
    if kind.startswith("shape:"):
        hd, heads, kv = (int(x) for x in kind.split(":")[1:])
        return LlamaConfig(vocab_size=320, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                           num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd,
                           max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                           tie_word_embeddings=False, initializer_range=0.05, bos_token_id=0, eos_token_id=None)
    sys.exit(f"unknown kind {kind!r}: use 8b, 70b, smoke or shape:HD:HEADS:KV")


def word_tokenizer(out, vocab):
    """A word-level tokenizer whose id i is the word "w<i>" (decodes to space-separated words)."""
    import json
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "w128000", "eos_token": "w128001",
        "chat_template": "{% for m in messages %}{{ m['content'] }} {% endfor %}"}))


def write_by_layer(cfg, out, dev):
    """Random bf16 weights (normal, std = initializer_range; norms 1) in transformers' names,
    one safetensors file per layer plus the embeddings, with an index."""
    import json
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    std = cfg.initializer_range
    rnd = lambda *s: torch.randn(*s, device=dev, dtype=torch.bfloat16) * std
    index = {}
    def save(name, tensors):
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(out / name), metadata={"format": "pt"})
        index.update({k: name for k in tensors})
    save("embed.safetensors", {"model.embed_tokens.weight": rnd(cfg.vocab_size, h),
                               "lm_head.weight": rnd(cfg.vocab_size, h),
                               "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)})
    # The GPU draws one layer at a time; copies to the host and file writes overlap in threads.
    # 141 GB took over 200 s on a VM disk: write it to /dev/shm (RAM) where there is room.
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(max_workers=6)
    jobs = []
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        jobs.append(pool.submit(save, f"layer-{l:03d}.safetensors", {
            p + "self_attn.q_proj.weight": rnd(h, h), p + "self_attn.k_proj.weight": rnd(kv, h),
            p + "self_attn.v_proj.weight": rnd(kv, h), p + "self_attn.o_proj.weight": rnd(h, h),
            p + "mlp.gate_proj.weight": rnd(i, h), p + "mlp.up_proj.weight": rnd(i, h),
            p + "mlp.down_proj.weight": rnd(h, i),
            p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16)}))
        pending = [j for j in jobs if not j.done()]
        if len(pending) > 6:  # at most 6 layers in flight
            pending[0].result()
    for j in jobs:
        j.result()
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    cfg.torch_dtype = "bfloat16"
    cfg.save_pretrained(out)


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
    cfg = config(kind)
    if kind == "70b":
        # 141 GB: made one layer at a time on the GPU and written shard by shard.
        write_by_layer(cfg, out, dev)
    else:
        with torch.device(dev):
            model = LlamaForCausalLM(cfg)
        model.save_pretrained(out, max_shard_size="5GB")
    if kind == "smoke" or kind.startswith("shape:"):  # the test models' BPE tokenizer and chat template
        src = ROOT / "tests" / "data" / "llama"
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
            if (src / f).exists():
                shutil.copy(src / f, out / f)
    else:
        word_tokenizer(out, cfg.vocab_size)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
