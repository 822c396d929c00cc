#!/usr/bin/env python3
"""Benchmark (not a test): rrun vs torchrun on this machine, same run.

1. Launch: `--nproc-per-node 8 --no-python true`, wall time (median of runs) and the
   peak RSS of the largest process in the launcher's tree (wait4 rusage).
2. Store: torch's TCPStore client against each launcher's store (torch's libuv
   server under torchrun, ours under rrun): round trips/s with 1 and 4 clients.

Usage: scripts/bench_launch.py [--runs N]   (run via scripts/bench-launch.sh)
"""
import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RRUN = os.environ.get("RRUN_BIN", str(ROOT / "target" / "release" / "rrun"))
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
BENCH_WORKER = str(ROOT / "tests" / "python" / "workers" / "store_bench.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd, env):
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.returncode == 0, (cmd, p.returncode)
    return wall, ru.ru_maxrss / 1024.0, out.decode()


def launch_bench(exe, runs, env):
    walls, rss = [], []
    for _ in range(runs):
        w, m, _ = timed([exe, "--nproc-per-node", "8", "--master-port", str(free_port()), "--no-python", "true"], env)
        walls.append(w)
        rss.append(m)
    return statistics.median(walls), max(rss)


def store_bench(exe, nproc, ops, env):
    env = dict(env, BENCH_OPS=str(ops))
    _, _, out = timed([exe, "--nproc-per-node", str(nproc), "--master-port", str(free_port()), BENCH_WORKER], env)
    rows = [dict(kv.split("=") for kv in line.split()[1:]) for line in out.splitlines() if line.startswith("BENCH")]
    assert len(rows) == nproc, out
    add_rate = nproc * ops / max(float(r["add_s"]) for r in rows)
    rt_rate = nproc * ops * 3 / max(float(r["setget_s"]) for r in rows)  # SET + WAIT + GET
    return add_rate, rt_rate


def rust_client_bench(exe, clients, ops, env):
    """Hosts a store with `<launcher> --no-python sleep`, then drives it with the Rust client."""
    port = free_port()
    host = subprocess.Popen([exe, "--nproc-per-node", "1", "--master-port", str(port), "--no-python", "sleep", "60"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        bench = str(ROOT / "target" / "release" / "examples" / "store_bench")
        out = subprocess.run([bench, "127.0.0.1", str(port), str(clients), str(ops)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return float(out.stdout)
    finally:
        host.terminate()
        host.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="launches per launcher")
    ap.add_argument("--ops", type=int, default=5000, help="store operations per client")
    a = ap.parse_args()
    env = dict(os.environ, PYTHON_EXEC=sys.executable, OMP_NUM_THREADS="1")
    ver = subprocess.run([RRUN, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"# {ver}, torch launcher {TORCHRUN}, {os.cpu_count()} CPUs")
    res = {}
    for name, exe in (("torchrun", TORCHRUN), ("rrun", RRUN)):
        res[name] = launch_bench(exe, a.runs, env)
        print(f"launch 8 x `true`  {name:9s} median wall {res[name][0]*1000:8.1f} ms   peak RSS {res[name][1]:7.1f} MiB")
    print(f"launch speed-up: {res['torchrun'][0] / res['rrun'][0]:.1f}x, memory: {res['torchrun'][1] / res['rrun'][1]:.0f}x less")
    for nproc in (1, 4):
        for name, exe in (("torchrun", TORCHRUN), ("rrun", RRUN)):
            add, rt = store_bench(exe, nproc, a.ops, env)
            print(f"store {nproc} python client(s) {name:9s} ADD {add:9.0f} ops/s   SET/WAIT/GET {rt:9.0f} round trips/s")
    for clients in (1, 8, 64):
        for name, exe in (("torchrun", TORCHRUN), ("rrun", RRUN)):
            rate = rust_client_bench(exe, clients, max(2000, 200000 // clients), env)
            print(f"store {clients:2d} rust client(s) server of {name:9s} ADD {rate:9.0f} round trips/s")


if __name__ == "__main__":
    main()
