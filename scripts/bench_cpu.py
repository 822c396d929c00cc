#!/usr/bin/env python3
"""Benchmark (not a test): `rrank generate` vs transformers `generate` on SmolLM2-135M-Instruct,
CPU, batch 1, same prompt (chat template), 32 greedy tokens including prefill, same machine,
same run. Prints tokens/s for each (median of --runs).

Usage: scripts/bench_cpu.py MODEL_DIR [--runs N] [--ranks 1]   (run via scripts/bench-cpu.sh)
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "What is the capital of France?"
NEW = 32


def transformers_runs(model_dir, runs):
    tok = AutoTokenizer.from_pretrained(model_dir)
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = []
    with torch.no_grad():
        m.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
        for _ in range(runs):
            t = time.perf_counter()
            g = m.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
            dt = time.perf_counter() - t
            assert g.shape[1] - ids.shape[1] == NEW
            out.append(NEW / dt)
    return out, ids.shape[1]


def rrank_runs(model_dir, runs, ranks):
    rrun, rrank = ROOT / "target/release/rrun", ROOT / "target/release/rrank"
    out, dec = [], []
    for _ in range(runs):
        cmd = [str(rrank), "generate", "--model", str(model_dir), "--prompt", PROMPT, "--max-tokens", str(NEW), "--ignore-eos"]
        if ranks > 1:
            cmd = [str(rrun), "--standalone", "--nproc-per-node", str(ranks), *cmd, "-pp", str(ranks)]
        p = subprocess.run(cmd, capture_output=True, text=True, check=True)
        m = re.search(r"decode ([\d.]+) tok/s, total ([\d.]+) tok/s", p.stderr)
        dec.append(float(m.group(1)))
        out.append(float(m.group(2)))
    return out, dec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ranks", type=int, default=1, help="rrank ranks (PP) under rrun")
    a = ap.parse_args()
    print(f"# {os.cpu_count()} CPUs, torch {torch.__version__} threads {torch.get_num_threads()}, prompt {PROMPT!r}, {NEW} greedy tokens incl. prefill")
    # rrank first: once torch has run, its OpenMP threads keep spinning for a while and
    # would take CPU from the other program.
    rr, dec = rrank_runs(a.model, a.runs, a.ranks)
    hf, n_prompt = transformers_runs(a.model, a.runs)
    print(f"prompt tokens: {n_prompt}")
    print(f"transformers generate (f32): median {statistics.median(hf):6.1f} tok/s  runs {[round(x, 1) for x in hf]}")
    print(f"rrank generate ({a.ranks} rank): median {statistics.median(rr):6.1f} tok/s  runs {[round(x, 1) for x in rr]}  (decode only: {statistics.median(dec):.1f})")
    print(f"ratio rrank / transformers: {statistics.median(rr) / statistics.median(hf):.2f}x")


if __name__ == "__main__":
    main()
