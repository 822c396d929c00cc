"""A scriptable worker for lifecycle tests (no torch import, so it starts fast).

Behaviour comes from the environment:
  LC_DIR        directory for per-rank records (<RANK>.pid, <RANK>.sig, <RANK>.exit)
  LC_FAIL_RANK  this rank exits with LC_FAIL_CODE after LC_FAIL_AFTER seconds
  LC_FAIL_UNTIL_RESTART  fail only while TORCHELASTIC_RESTART_COUNT < this
  LC_IGNORE_TERM  ignore SIGTERM
  LC_SLEEP      seconds the other ranks live (default 60)
"""
import os
import signal
import sys
import time

d = os.environ["LC_DIR"]
rank = os.environ["RANK"]
restart = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
with open(os.path.join(d, f"{rank}.pid"), "w") as f:
    f.write(str(os.getpid()))
with open(os.path.join(d, f"{rank}.restarts"), "a") as f:
    f.write(f"{restart}\n")


def on_signal(n, _frame):
    with open(os.path.join(d, f"{rank}.sig"), "w") as f:
        f.write(f"{n} {time.time()}")
    sys.exit(128 + n)


for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(s, on_signal)
if os.environ.get("LC_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

fail_until = int(os.environ.get("LC_FAIL_UNTIL_RESTART", "1000000"))
if os.environ.get("LC_FAIL_RANK") == rank and restart < fail_until:
    time.sleep(float(os.environ.get("LC_FAIL_AFTER", "0.5")))
    print(f"rank {rank} is failing on purpose", file=sys.stderr, flush=True)
    with open(os.path.join(d, f"{rank}.exit"), "w") as f:
        f.write(str(time.time()))
    sys.exit(int(os.environ.get("LC_FAIL_CODE", "3")))
time.sleep(float(os.environ.get("LC_SLEEP", "60")))
