#!/usr/bin/env python3
"""Tensor-parallel scaling runs (issue "TP=4 and TP=8 scaling"): for a Llama-3-8B-shaped and a
Llama-3-70B-shaped random bf16 checkpoint, batch-1 decode and 256-concurrency throughput at every
placement that fits the machine's GPUs (TP 1/2/4/8, and PP 2 × TP 4 on 8 GPUs; the 70B needs at
least TP 2 on 80 GB cards), through scripts/bench_gpu.py. Writes one bench JSON per model, a
markdown table (scaling.md) with the ratio to TP 1, and a PNG (decode tok/s against GPUs).

Usage: bench_scaling.py [--plot-from JSON] [--bin DIR] [--out DIR] [--models 8b,70b] [--dir /dev/shm] [--device cuda]
                        [--only '70b:2;8b:1,4']   (a subset of the placements)
The checkpoints are made with scripts/make_gpu_model.py under --dir (141 GB for the 70B: /dev/shm
holds it in RAM where the machine has the room; a VM disk took over 200 s to write it).
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench_gpu import placement

ROOT = Path(__file__).resolve().parent.parent
# Placements per model: (TP, PP); the 70B's weights need >= 2 GPUs of 80 GB.
PLACEMENTS = {"8b": [(1, 1), (2, 1), (4, 1), (8, 1), (4, 2)], "70b": [(2, 1), (4, 1), (8, 1), (4, 2)]}


def gpus(device):
    if device != "cuda":
        return 2
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return len([l for l in out.stdout.splitlines() if l.strip()])


def spec(tp, pp):
    return f"{tp}x{pp}" if pp > 1 else str(tp)


def table(results):
    lines = ["| model | placement | GPUs | batch-1 decode tok/s | × first placement | tok/s at concurrency 256 |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        base = None
        for key, v in r["tp"].items():
            tp, pp = placement(key)
            where = f"| {name} | TP={tp}" + (f" PP={pp}" if pp > 1 else "") + f" | {tp * pp} | "
            if "error" in v:
                lines.append(where + "failed: "
                             + v["error"][:80].replace("|", "/") + " | | |")
                continue
            d = v["batch1_decode_tok_s"]
            base = base or d
            c256 = v["concurrency"].get("256", v["concurrency"].get(256, {})).get("output_tok_s")
            lines.append(where + f"{d:.1f} | {d / base:.2f}× | "
                         + (f"{c256:,.0f}" if c256 else "—") + " |")
    return "\n".join(lines)


def plot(results, gpu, path):
    """Batch-1 decode tok/s against GPUs, a line per model; skipped without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG", flush=True)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        xs, ys = [], []
        for key, v in r["tp"].items():
            if "error" in v:
                continue
            tp, pp = placement(key)
            xs.append(tp * pp)
            ys.append(v["batch1_decode_tok_s"])
        ax.plot(xs, ys, marker="o", label=f"{name} shape")
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.margins(y=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("GPUs (TP, or TP×PP)")
    ax.set_ylabel("batch-1 decode tokens/s")
    ax.set_title(f"rrank scaling, bf16, {gpu}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target" / "release"))
    ap.add_argument("--out", default="bench-scaling")
    ap.add_argument("--models", default="8b,70b")
    ap.add_argument("--dir", default="/dev/shm")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model-8b", default=None, help="use this 8B-shaped checkpoint instead of making one")
    ap.add_argument("--model-70b", default=None, help="use this 70B-shaped checkpoint instead of making one")
    ap.add_argument("--concurrency", default="1,256")
    ap.add_argument("--only", default=None,
                    help="placements to run, e.g. 70b:2 or 8b:1,2,4 (default: every one that fits)")
    ap.add_argument("--input-len", default="512")
    ap.add_argument("--output-len", default="256")
    ap.add_argument("--plot-from", default=None,
                    help="no runs: redraw scaling.md/.png under --out from a saved scaling JSON")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.plot_from:
        results = {k: v for k, v in json.loads(Path(a.plot_from).read_text()).items() if not k.startswith("_")}
        gpu = next((r["gpu"][0] for r in results.values() if r.get("gpu")), "")
        (out / "scaling.md").write_text(f"{gpu}\n\n{table(results)}\n")
        print(table(results), flush=True)
        plot(results, gpu, out / "scaling.png")
        return
    n_gpus = gpus(a.device)
    results = {}
    for name in a.models.split(","):
        fits = [spec(tp, pp) for tp, pp in PLACEMENTS[name] if tp * pp <= n_gpus]
        if a.only:
            wanted = dict(x.split(":") for x in a.only.split(";") if ":" in x)
            fits = [f for f in fits if f in wanted.get(name, "").split(",")]
        if not fits:
            print(f"{name}: no placement to run on {n_gpus} GPU(s)", flush=True)
            continue
        # Made only when a placement of it runs (the 70B is 141 GB).
        model = Path(getattr(a, f"model_{name}") or Path(a.dir) / f"rrun-llama3-{name}-random")
        if not (model / "config.json").exists():
            subprocess.run([sys.executable, ROOT / "scripts" / "make_gpu_model.py", name, model], check=True)
        sub = out / name
        subprocess.run([sys.executable, ROOT / "scripts" / "bench_gpu.py", "--bin", a.bin, "--model", model, "--tp",
                        ",".join(fits), "--concurrency", a.concurrency, "--device", a.device, "--out", sub,
                        "--input-len", a.input_len, "--output-len", a.output_len])
        if (sub / "bench-gpu.json").exists():
            results[name] = json.loads((sub / "bench-gpu.json").read_text())
    md = table(results)
    gpu = next((r["gpu"][0] for r in results.values() if r.get("gpu")), "")
    (out / "scaling.md").write_text(f"{gpu}\n\n{md}\n")
    print(md, flush=True)
    (out / "scaling.json").write_text(json.dumps(results, indent=1))
    plot(results, gpu, out / "scaling.png")

if __name__ == "__main__":
    main()
