#!/usr/bin/env python3
"""GPU serving benchmark (issue "GPU speed"): for each tensor-parallel size, cold start to
/health 200, batch-1 decode and TTFT at low load, and throughput at several concurrencies
(rrun-bench: random prompts, --input-len in, --output-len out, EOS ignored); optionally
transformers' own batch-1 `generate` and continuous batching (`generate_batch`) on the same
weights as peers. Writes JSON and, when matplotlib is importable, a PNG plot.

Usage: bench_gpu.py [--bin DIR] [--model DIR] [--tp 1,2] [--concurrency 1,16,64,256]
                    [--input-len 512] [--output-len 256] [--peers] [--out DIR] [--device cuda]
Without --model a random Llama-3-8B-shaped bf16 checkpoint is made (scripts/make_gpu_model.py).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def say(*a):
    print(*a, flush=True)


def health(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
    except Exception:
        return False


def placement(spec):
    """`4` is TP 4; `4x2` is TP 4 × PP 2."""
    tp, _, pp = spec.partition("x")
    return int(tp), int(pp or 1)


def serve(bins, model, spec, port, device, log, extra=()):
    tp, pp = placement(spec)
    cmd = [bins / "rrun", "--standalone", "--nproc-per-node", tp * pp, bins / "rrank", "--model", model, "-tp", tp,
           "-pp", pp, "--port", port, "--device", device, "--max-num-seqs", 256, "--served-model-name", "bench",
           *extra]
    t0 = time.time()
    p = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=log, start_new_session=True)
    while not health(port):
        if p.poll() is not None:
            raise SystemExit(f"server exited with {p.returncode}; see {log.name}")
        if time.time() - t0 > 600:
            raise SystemExit("no /health 200 within 600 s")
        time.sleep(0.02)
    return p, time.time() - t0


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    p.wait(timeout=120)


VOCAB = 1000


def step_counters(port):
    """rrank's engine step counters from /metrics: {(family, kind): value}."""
    import re
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(m.group(1), m.group(2)): float(m.group(3)) for m in
            re.finditer(r'^rrun:(engine_step\w*)\{[^}]*kind="(\w+)"\} (\S+)$', text, re.M)}


def step_split(before, after):
    """Per kind: steps, mean step time and mean tokens per step over a run."""
    out = {}
    for kind in ("decode", "prefill"):
        d = lambda f: after.get((f, kind), 0.0) - before.get((f, kind), 0.0)
        n = d("engine_steps_total")
        out[kind] = {"steps": int(n), "mean_ms": 1e3 * d("engine_step_seconds_total") / n if n else 0.0,
                     "tokens_per_step": d("engine_step_tokens_total") / n if n else 0.0,
                     "seqs_per_step": d("engine_step_seqs_total") / n if n else 0.0}
    return out


def bench(bins, port, n, conc, ilen, olen, out):
    cmd = [bins / "rrun-bench", "--base-url", f"http://127.0.0.1:{port}", "--num-prompts", n, "--max-concurrency",
           conc, "--input-len", ilen, "--output-len", olen, "--vocab", VOCAB, "--result-json", out, "--quiet"]
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)
    return json.loads(Path(out).read_text())


PEERS = r"""
import json, sys, time, torch
from transformers import AutoModelForCausalLM, GenerationConfig
path, ilen, olen, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dev = "cuda" if torch.cuda.is_available() else "cpu"
m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if dev == "cuda" else torch.float32).to(dev).eval()
g = torch.Generator().manual_seed(0)
prompts = [torch.randint(4, 1000, (ilen,), generator=g).tolist() for _ in range(n)]
res = {}
ids = torch.tensor([prompts[0]], device=dev)
with torch.no_grad():
    m.generate(ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    t = time.time(); m.generate(ids, max_new_tokens=olen, min_new_tokens=olen, do_sample=False)
    res["generate_batch1_tok_s"] = olen / (time.time() - t)
cfg = GenerationConfig(max_new_tokens=olen, min_new_tokens=olen, do_sample=False, eos_token_id=-1, pad_token_id=0)
try:
    t = time.time(); out = m.generate_batch(inputs=prompts, generation_config=cfg)
    dt = time.time() - t
    toks = sum(len(r.generated_tokens) for r in out.values())
    res["generate_batch_tok_s"] = toks / dt
    res["generate_batch_requests"] = len(prompts)
except Exception as e:
    res["generate_batch_error"] = f"{type(e).__name__}: {e}"[:300]
print(json.dumps(res))
"""


def run_peers(model, a):
    """transformers' batch-1 generate and generate_batch on the same weights and GPU."""
    p = subprocess.run([sys.executable, "-c", PEERS, model, str(a.input_len), str(a.output_len), str(a.peer_prompts)],
                       capture_output=True, text=True)
    return json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {"error": p.stderr[-500:]}


def label(spec):
    tp, pp = placement(str(spec))
    return f"TP={tp}" + (f" PP={pp}" if pp > 1 else "")


def plot(result, out):
    """tokens/s and TTFT against concurrency, one line per placement (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for tp, r in result["tp"].items():
            if "concurrency" not in r:  # a placement that failed
                continue
            conc = {int(c): v for c, v in r["concurrency"].items()}
            cs = sorted(conc)
            ax1.plot(cs, [conc[c]["output_tok_s"] for c in cs], marker="o", label=f"rrank {label(tp)}")
            ax2.plot(cs, [conc[c]["ttft_p50_ms"] for c in cs], marker="o", label=f"rrank {label(tp)}")
        peer = result.get("transformers", {}).get("generate_batch_tok_s")
        if peer:
            ax1.axhline(peer, linestyle="--", color="gray", label="transformers generate_batch")
        for ax, t in ((ax1, "output tokens/s"), (ax2, "TTFT p50 (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent requests")
            ax.set_title(t)
            ax.legend()
        fig.suptitle(f"{Path(result['model']).name}, {result['input_len']} in / {result['output_len']} out, {(result['gpu'] or [''])[0]}")
        fig.tight_layout()
        fig.savefig(out / "bench-gpu.png", dpi=120)
        say(f"wrote {out / 'bench-gpu.png'}")
    except ImportError:
        say("matplotlib is not installed: no PNG (the JSON has every number)")


def run_placement(bins, model, tp, a, out):
    """One placement: start the server, batch-1 decode and TTFT, then each concurrency."""
    with open(out / f"server-tp{tp}.log", "w") as log:
        p, cold = serve(bins, model, tp, a.port, a.device, log, a.server_args.split())
        try:
            r = {"cold_start_s": cold}
            one = bench(bins, a.port, 4, 1, a.input_len, a.output_len, out / f"tp{tp}-c1-batch1.json")
            r["batch1_decode_tok_s"] = 1e3 / one["tpot"]["p50_ms"]
            r["ttft_p50_ms_low_load"] = one["ttft"]["p50_ms"]
            r["concurrency"] = {}
            for c in [int(x) for x in a.concurrency.split(",")]:
                before = step_counters(a.port)
                b = bench(bins, a.port, max(2 * c, 8), c, a.input_len, a.output_len, out / f"tp{tp}-c{c}.json")
                steps = step_split(before, step_counters(a.port))
                r["concurrency"][c] = {"output_tok_s": b["output_throughput"], "ttft_p50_ms": b["ttft"]["p50_ms"],
                                       "tpot_p50_ms": b["tpot"]["p50_ms"], "failed": b["failed"], "steps": steps}
                sd, sp = steps["decode"], steps["prefill"]
                say(f"tp{tp} concurrency {c}: {b['output_throughput']:.0f} output tok/s, TTFT p50 "
                    f"{b['ttft']['p50_ms']:.1f} ms, TPOT p50 {b['tpot']['p50_ms']:.2f} ms; steps: "
                    f"{sd['steps']} decode-only ({sd['mean_ms']:.1f} ms, {sd['seqs_per_step']:.0f} seqs), "
                    f"{sp['steps']} with prefill ({sp['mean_ms']:.1f} ms, {sp['tokens_per_step']:.0f} tokens)")
        finally:
            stop(p)
    say(f"tp{tp}: cold start {cold:.2f} s, batch-1 decode {r['batch1_decode_tok_s']:.1f} tok/s, "
        f"TTFT p50 {r['ttft_p50_ms_low_load']:.1f} ms")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target" / "release"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--tp", default="1,2", help="placements: TP sizes, or TPxPP (4x2)")
    ap.add_argument("--server-args", default="", help="extra rrank flags, space-separated")
    ap.add_argument("--plot-only", default=None, help="redraw the PNG from a bench-gpu.json")
    ap.add_argument("--peers-only", action="store_true", help="only transformers' numbers (peers.json)")
    ap.add_argument("--concurrency", default="1,16,64,256")
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--peer-prompts", type=int, default=256)
    ap.add_argument("--port", type=int, default=8555)
    ap.add_argument("--out", default="bench-gpu")
    a = ap.parse_args()
    bins, out = Path(a.bin).resolve(), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.plot_only:
        plot(json.loads(Path(a.plot_only).read_text()), out)
        return
    model = Path(a.model) if a.model else Path("/tmp/rrun-llama3-8b-random")
    if not (model / "config.json").exists():
        if a.model:
            # Never make the default 8B under a path the user named for another model.
            raise SystemExit(f"no config.json in {model}: make it first (scripts/make_gpu_model.py 8b|70b {model})")
        subprocess.run([sys.executable, ROOT / "scripts" / "make_gpu_model.py", "8b", model], check=True)
    global VOCAB
    VOCAB = min(VOCAB, json.loads((model / "config.json").read_text())["vocab_size"] - 1)
    if a.peers_only:
        peers = run_peers(model, a)
        say("transformers:", peers)
        (out / "peers.json").write_text(json.dumps(peers, indent=1))
        return
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip().splitlines() if a.device == "cuda" else ["cpu"]
    result = {"gpu": gpu, "model": str(model), "input_len": a.input_len, "output_len": a.output_len, "tp": {}}
    for tp in a.tp.split(","):
        # A placement that fails (no /health, a bench error) is recorded and the next one
        # runs; the JSON is rewritten after every placement, so a run stopped by a time
        # limit keeps what it measured.
        try:
            result["tp"][tp] = run_placement(bins, model, tp, a, out)
        except (SystemExit, Exception) as e:
            say(f"tp{tp}: failed: {e}")
            result["tp"][tp] = {"error": str(e)}
        (out / "bench-gpu.json").write_text(json.dumps(result, indent=1))
    if a.peers:
        result["transformers"] = run_peers(model, a)
        say("transformers:", result["transformers"])
    (out / "bench-gpu.json").write_text(json.dumps(result, indent=1))
    plot(result, out)
    say(f"wrote {out / 'bench-gpu.json'}")


if __name__ == "__main__":
    main()
