"""Peer benchmark: gpt-fast (https://github.com/pytorch-labs/gpt-fast at 32971d3, its model.py and
generate.py unchanged, BSD-3 licence; not part of this repository: clone it and pass the folder as
--gpt-fast) decoding a Llama-3-8B-shaped bf16 model with random weights at batch 1, decode compiled
with torch.compile(mode="reduce-overhead", fullgraph=True) as gpt-fast's own main does
(sampling temperature 0.8, top-k 200, its defaults). Speed does not depend on the weights' values, so no
checkpoint is needed.

Usage (on a GPU machine; first compile takes about two minutes):
    git clone https://github.com/pytorch-labs/gpt-fast DIR && git -C DIR checkout 32971d3
    python3 scripts/peers/gptfast_bench.py --gpt-fast DIR [--prompt-len 512] [--new-tokens 256] [--model llama-3-8b]
Prints one JSON line: decode tok/s (median of 3, prefill excluded: the time of N new tokens minus the time
of 1), the same including prefill, weight bytes, and device copy bandwidth (read + write) measured first.
Run it in the same device call as the rrank benchmark it is compared with."""
import argparse, contextlib, json, statistics, sys, time
from pathlib import Path
import torch
if not hasattr(torch.backends.cuda, "sdp_kernel"):  # removed in newer torch; gpt-fast still calls it
    torch.backends.cuda.sdp_kernel = lambda **k: contextlib.nullcontext()
ap = argparse.ArgumentParser()
ap.add_argument("--gpt-fast", type=Path, required=True, help="a checkout of pytorch-labs/gpt-fast (32971d3)")
ap.add_argument("--prompt-len", type=int, default=512)
ap.add_argument("--new-tokens", type=int, default=256)
ap.add_argument("--model", default="llama-3-8b")
a = ap.parse_args()
sys.path.insert(0, str(a.gpt_fast.resolve()))
import generate as G  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402

res = {"model": a.model, "prompt_len": a.prompt_len, "new_tokens": a.new_tokens, "gpu": torch.cuda.get_device_name()}

x = torch.empty(2 * 1024**3, dtype=torch.bfloat16, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True); torch.cuda.synchronize(); e0.record()
for _ in range(10): y.copy_(x)
e1.record(); torch.cuda.synchronize()
res["copy_GBps_read_write"] = round(10 * 2 * x.numel() * 2 / (e0.elapsed_time(e1) / 1e3) / 1e9)
del x, y; torch.cuda.empty_cache()

torch.manual_seed(0)
with torch.device("meta"):
    m = Transformer(ModelArgs.from_name(a.model))
m = m.to_empty(device="cuda").to(torch.bfloat16).eval()
with torch.no_grad():
    for p in m.parameters():
        p.normal_(0, 0.02)
res["weight_bytes"] = sum(p.numel() * p.element_size() for p in m.parameters())
G.decode_one_token = torch.compile(G.decode_one_token, mode="reduce-overhead", fullgraph=True)
prompt = torch.randint(0, 1000, (a.prompt_len,), device="cuda", dtype=torch.int)


def timed(n):
    torch.cuda.synchronize(); t = time.perf_counter()
    G.generate(m, prompt, n, batch_size=1, interactive=False, draft_model=None, temperature=0.8, top_k=200)
    torch.cuda.synchronize(); return time.perf_counter() - t


t = time.time()
for _ in range(2):
    timed(a.new_tokens); timed(2)
res["compile_and_warmup_s"] = round(time.time() - t, 1)
full = [timed(a.new_tokens) for _ in range(3)]
short = [timed(2) for _ in range(3)]
dec = (statistics.median(full) - statistics.median(short)) / (a.new_tokens - 2)
res["decode_tok_s"] = round(1 / dec, 1)
res["tok_s_incl_prefill"] = round(a.new_tokens / statistics.median(full), 1)
res["decode_weight_GBps"] = round(res["weight_bytes"] / dec / 1e9)
print(json.dumps(res), flush=True)
