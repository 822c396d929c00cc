#!/usr/bin/env python3
"""Writes FP8 test checkpoints under tests/data/ (committed) with llmcompressor, the tool users
quantize with, and their references.

For each base model NAME (the tiny llama and qwen2 of scripts/make-test-model.py): llmcompressor's
oneshot with QuantizationModifier(scheme SCHEME, targets Linear, ignore lm_head), saved compressed
(compressed-tensors float-quantized: e4m3 weights with their weight_scale tensors, and input_scale
tensors for the static scheme) as
tests/data/NAME-fp8-SUFFIX, with the base model's tokenizer. reference.json: the dequantized model
(every FP8 weight as float32 e4m3 · scale, the tool's dequantized weights; activations unquantized)
run by transformers in float32 on the base model's prompt: logits at every prompt position and 32 greedy tokens. FP8 changes
the weights enough that the greedy tokens may differ from the base model's; the reference is the
quantized model itself.

It also writes tests/data/{llama,qwen2}/reference-fp8-at-load.json: the base model with every
Linear of its layers quantized per channel as `rrank --quantization fp8` does at load.

Usage: scripts/make-fp8-test-model.py [OUT_DIR]   (needs torch, transformers, llmcompressor)
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA
# (base model, llmcompressor scheme, directory suffix). FP8_DYNAMIC: per-channel weight scales,
# per-token activations at run time; FP8: per-tensor weight scales and static per-tensor input
# scales, calibrated on CALIBRATION random-token sequences.
MODELS = [("llama", "FP8_DYNAMIC", "dynamic"), ("qwen2", "FP8_DYNAMIC", "dynamic"), ("llama", "FP8", "static")]
CALIBRATION = 16


def dequantized_state(d):
    """Every tensor of the checkpoint in float32, FP8 weights times their scales: `weight_scale`
    (compressed-tensors: per channel or per tensor) or `weight_scale_inv` (transformers' fp8: one
    per block of the weight, expanded to the elements it covers)."""
    sd = {}
    for f in sorted(d.glob("*.safetensors")):
        sd.update(load_file(f))
    out = {}
    for k, v in sd.items():
        if k.endswith(("_scale", "_scale_inv")):
            continue
        if v.dtype != torch.float8_e4m3fn:
            out[k] = v.float()
        elif k + "_scale" in sd:
            out[k] = v.float() * sd[k + "_scale"].float()
        else:
            s = sd[k + "_scale_inv"].float()
            br, bc = -(-v.shape[0] // s.shape[0]), -(-v.shape[1] // s.shape[1])
            full = s.repeat_interleave(br, 0).repeat_interleave(bc, 1)[: v.shape[0], : v.shape[1]]
            out[k] = v.float() * full
    return out


def run_reference(src, state):
    """`src`'s model in float32 with `state` as its weights, on `src`'s reference prompt: logits
    at every prompt position (rounded to 6 places) and 32 greedy tokens."""
    base = json.loads((src / "reference.json").read_text())
    cfg = AutoConfig.from_pretrained(src)
    cfg.dtype = torch.float32
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = m.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    m.tie_weights()
    m.eval()
    ids = torch.tensor([base["prompt_ids"]])
    with torch.no_grad():
        logits = m(ids).logits[0].float()
        greedy = m.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                            eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:].tolist()
    return base, [[round(x, 6) for x in row] for row in logits.tolist()], greedy


def write_reference(src, dst, note):
    """reference.json of checkpoint `dst` (the dequantized model in float32) on `src`'s prompt."""
    base, logits, greedy = run_reference(src, dequantized_state(dst))
    (dst / "reference.json").write_text(json.dumps({
        "prompt": base.get("prompt"), "prompt_ids": base["prompt_ids"], "scheme": note,
        "logits": logits, "greedy": greedy}))
    print(f"{dst}: {note}, greedy {greedy[:8]}...")


def quantized_at_load(src):
    """`src`'s weights as `rrank --quantization fp8` holds them: every Linear of the layers per
    channel, scale = max|w| / 448 in float32, e4m3(w / scale) (round to nearest even), dequantized."""
    sd = {}
    for f in sorted(src.glob("*.safetensors")):
        sd.update(load_file(f))
    out = {}
    for k, v in sd.items():
        w = v.float()
        if k.startswith("model.layers.") and k.endswith("_proj.weight"):
            amax = w.abs().amax(dim=1, keepdim=True)
            scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
            w = (w / scale).to(torch.float8_e4m3fn).float() * scale
        out[k] = w
    return out


def write_at_load_reference(name):
    src = DATA / name
    base, logits, greedy = run_reference(src, quantized_at_load(src))
    (src / "reference-fp8-at-load.json").write_text(json.dumps({
        "prompt_ids": base["prompt_ids"], "args": ["--quantization", "fp8"], "logits": logits, "greedy": greedy}))
    print(f"{src}/reference-fp8-at-load.json: greedy {greedy[:8]}...")


def main():
    for name in ["llama", "qwen2"]:
        write_at_load_reference(name)
    # llama-fp8-block: transformers' own FineGrainedFP8Config(weight_block_size=(16, 16)) quantizer,
    # which needs a GPU (made on the H200: from_pretrained("tests/data/llama", quantization_config=...,
    # device_map="cuda").save_pretrained(...)); only its reference is (re)written here.
    if (OUT / "llama-fp8-block" / "model.safetensors").exists():
        write_reference(DATA / "llama", OUT / "llama-fp8-block", "transformers fp8, 16x16 blocks")
    for name, scheme, suffix in MODELS:
        src = DATA / name
        dst = OUT / f"{name}-fp8-{suffix}"
        shutil.rmtree(dst, ignore_errors=True)
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
        recipe = QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"])
        if scheme == "FP8_DYNAMIC":
            oneshot(model=m, recipe=recipe)
        else:
            from datasets import Dataset
            g = torch.Generator().manual_seed(0)
            rows = [{"input_ids": torch.randint(4, m.config.vocab_size, (24,), generator=g).tolist(),
                     "attention_mask": [1] * 24} for _ in range(CALIBRATION)]
            oneshot(model=m, dataset=Dataset.from_list(rows), recipe=recipe,
                    num_calibration_samples=CALIBRATION, max_seq_length=24)
        m.save_pretrained(dst, save_compressed=True)
        for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
            if (src / f).exists():
                shutil.copy(src / f, dst / f)
        for f in ["recipe.yaml"]:
            (dst / f).unlink(missing_ok=True)
        write_reference(src, dst, scheme)


if __name__ == "__main__":
    main()
