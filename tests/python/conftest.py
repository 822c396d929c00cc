"""Shared fixtures for the compatibility tests: real torch 2.11 and real torchrun
next to rrun. Run through scripts/test.sh, which builds rrun and sets RRUN_BIN."""
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).resolve().parent / "workers"
RRUN = os.environ.get("RRUN_BIN", str(ROOT / "target" / "debug" / "rrun"))
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def free_port():
    """A port free now, in 10000..32767, below Linux's ephemeral range: a port from
    bind(0) is one any outgoing connection may take as its local port before the
    launcher binds it (this flaked the two-agent c10d test in CI)."""
    for _ in range(200):
        port = random.randrange(10000, 32768)
        try:
            with socket.socket() as s:
                s.bind(("0.0.0.0", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port found in 10000..32767")


def worker(name):
    return str(WORKERS / name)


def base_env(**extra):
    """The parent environment both launchers get: the test's own, python pinned
    through PYTHON_EXEC (torchrun and rrun both honour it), no OMP/CVD/PET leftovers."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PET_", "TORCHELASTIC_")) and k not in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")}
    env["PYTHON_EXEC"] = PYTHON
    env["PATH"] = str(Path(PYTHON).parent) + os.pathsep + env.get("PATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def launch(launcher, args, env=None, timeout=120, **kw):
    exe = RRUN if launcher == "rrun" else TORCHRUN
    return subprocess.run([exe, *map(str, args)], env=env or base_env(), capture_output=True,
                          text=True, timeout=timeout, **kw)


def popen(launcher, args, env=None, **kw):
    exe = RRUN if launcher == "rrun" else TORCHRUN
    return subprocess.Popen([exe, *map(str, args)], env=env or base_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture
def port():
    return free_port()
