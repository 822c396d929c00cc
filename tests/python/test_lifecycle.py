"""Failure handling, restarts, signals and exit codes of rrun, with real processes."""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from conftest import base_env, free_port, launch, popen, worker


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it no longer runs.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for_pids(d, n, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        files = list(Path(d).glob("*.pid"))
        if len(files) == n and all(f.read_text() for f in files):
            return {int(f.stem): int(f.read_text()) for f in files}
        time.sleep(0.05)
    raise AssertionError(f"workers did not start: {list(Path(d).iterdir())}")


def lc_env(d, **kw):
    return base_env(LC_DIR=d, **kw)


def test_one_rank_fails_others_get_sigterm_within_a_second(tmp_path):
    p = launch("rrun", ["--nproc-per-node", 3, "--master-port", free_port(), "-t", 2, worker("lifecycle.py")],
               env=lc_env(tmp_path, LC_FAIL_RANK=1, LC_FAIL_CODE=3))
    assert p.returncode == 1, p.stderr
    failed_at = float((tmp_path / "1.exit").read_text())
    for r in (0, 2):
        sig, at = (tmp_path / f"{r}.sig").read_text().split()
        assert int(sig) == signal.SIGTERM
        assert float(at) - failed_at < 1.0, f"rank {r} got SIGTERM {float(at) - failed_at:.2f}s after the failure"
    err = p.stderr
    root = err[err.index("Root Cause (first observed failure):"):err.index("Other Failures:")]
    assert "rank      : 1 (local_rank: 1)" in root and "exitcode  : 3 (pid:" in root, err
    assert "| rank 1 is failing on purpose" in root, "the captured stderr tail is shown"
    others = err[err.index("Other Failures:"):]
    assert others.count("terminated by rrun") == 2, err
    assert "lifecycle.py FAILED" in err
    assert "failed (exitcode: 3) local_rank: 1" in err


def test_exit_code_matches_torchrun_on_failure(tmp_path):
    for launcher in ("torchrun", "rrun"):
        d = tmp_path / launcher
        d.mkdir()
        p = launch(launcher, ["--nproc-per-node", 1, "--master-port", free_port(), worker("lifecycle.py")],
                   env=lc_env(d, LC_FAIL_RANK=0, LC_FAIL_CODE=42, LC_FAIL_AFTER=0))
        assert p.returncode == 1, (launcher, p.stderr)
        assert "exitcode  : 42" in p.stderr


def test_max_restarts_restarts_with_the_count_visible(tmp_path):
    logs = tmp_path / "logs"
    p = launch("rrun", ["--nproc-per-node", 2, "--max-restarts", 2, "--master-port", free_port(),
                        "--log-dir", logs, worker("lifecycle.py")],
               env=lc_env(tmp_path, LC_FAIL_RANK=0, LC_FAIL_UNTIL_RESTART=2, LC_FAIL_AFTER=0.2, LC_SLEEP=0.5))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "0.restarts").read_text().split() == ["0", "1", "2"]
    assert (tmp_path / "1.restarts").read_text().split() == ["0", "1", "2"]
    run_dir = next(logs.iterdir())
    assert sorted(x.name for x in run_dir.iterdir()) == ["attempt_0", "attempt_1", "attempt_2"]
    assert "will restart worker group" in p.stderr


def test_restarts_exhausted_fail(tmp_path):
    p = launch("rrun", ["--nproc-per-node", 1, "--max-restarts", 1, "--master-port", free_port(), worker("lifecycle.py")],
               env=lc_env(tmp_path, LC_FAIL_RANK=0, LC_FAIL_AFTER=0))
    assert p.returncode == 1
    assert (tmp_path / "0.restarts").read_text().split() == ["0", "1"]


def test_kill_9_of_rrun_leaves_no_worker_alive(tmp_path):
    p = popen("rrun", ["--nproc-per-node", 3, "--master-port", free_port(), worker("lifecycle.py")], env=lc_env(tmp_path))
    pids = wait_for_pids(tmp_path, 3)
    p.kill()
    p.wait()
    time.sleep(1.0)
    assert [pid for pid in pids.values() if alive(pid)] == []


def test_unhandled_signal_kills_rrun_and_its_workers(tmp_path):
    p = popen("rrun", ["--nproc-per-node", 2, "--master-port", free_port(), worker("lifecycle.py")], env=lc_env(tmp_path))
    pids = wait_for_pids(tmp_path, 2)
    p.send_signal(signal.SIGUSR1)
    p.wait(timeout=10)
    assert p.returncode == -signal.SIGUSR1, "rrun dies of SIGUSR1 as torchrun does"
    time.sleep(1.0)
    assert [pid for pid in pids.values() if alive(pid)] == [], "but leaves no orphans"


def test_sigterm_and_sigint_are_forwarded(tmp_path):
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        d = tmp_path / sig.name
        d.mkdir()
        p = popen("rrun", ["--nproc-per-node", 2, "--master-port", free_port(), worker("lifecycle.py")], env=lc_env(d))
        wait_for_pids(d, 2)
        t = time.time()
        p.send_signal(sig)
        _, err = p.communicate(timeout=30)
        assert p.returncode == 1, (sig, err)
        assert time.time() - t < 5
        for r in (0, 1):
            assert int((d / f"{r}.sig").read_text().split()[0]) == sig, (sig, r)
        assert f"Received {int(sig)} death signal, shutting down workers" in err
        assert f"closing signal {sig.name}" in err


def test_term_timeout_escalates_to_sigkill(tmp_path):
    t = time.time()
    p = launch("rrun", ["--nproc-per-node", 2, "--term-timeout", 1, "--master-port", free_port(), worker("lifecycle.py")],
               env=lc_env(tmp_path, LC_FAIL_RANK=0, LC_IGNORE_TERM=1))
    assert p.returncode == 1
    assert time.time() - t < 15
    assert "forcefully exiting via 9" in p.stderr
    assert "exitcode  : -9" in p.stderr


def test_sigint_during_rendezvous_exits_at_once(port):
    p = popen("rrun", ["--nnodes", 2, "--master-port", port, "--no-python", "true"])
    time.sleep(1.0)
    t = time.time()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=10)
    assert time.time() - t < 2, "torchrun defers this for up to 900 s"
    assert p.returncode == 130, err


def test_error_file_is_reported_and_propagated(tmp_path):
    parent_file = tmp_path / "parent_error.json"
    p = launch("rrun", ["--nproc-per-node", 1, "--master-port", free_port(), worker("recorded_error.py")],
               env=base_env(TORCHELASTIC_ERROR_FILE=parent_file))
    assert p.returncode == 1
    assert "ValueError: boom from the worker" in p.stderr
    assert "error_file: /" in p.stderr and "error.json" in p.stderr
    data = json.loads(parent_file.read_text())
    assert data["message"]["errorCode"] == 1
    assert "boom from the worker" in data["message"]["message"]


def test_concurrent_standalone_jobs_do_not_collide(tmp_path):
    a = popen("rrun", ["--standalone", "--nproc-per-node", 2, "--no-python", "sleep", "1"])
    b = popen("rrun", ["--standalone", "--nproc-per-node", 2, "--no-python", "sleep", "1"])
    assert a.wait(timeout=30) == 0 and b.wait(timeout=30) == 0


def test_root_cause_is_the_first_observed_failure_within_one_second(tmp_path):
    # Rank 1 dies of SIGKILL, rank 0 exits 1 about 200 ms later in the same wall-clock
    # second: torch's whole-second timestamps tie, and the tie must not go to rank 0.
    at = int(time.time()) + 3
    p = launch("rrun", ["--nproc-per-node", 2, "--master-port", free_port(), worker("sigkill_root.py")],
               env=base_env(SK_AT=at), timeout=60)
    assert p.returncode == 1, p.stderr
    err = p.stderr
    root = err[err.index("Root Cause (first observed failure):"):err.index("Other Failures:")]
    others = err[err.index("Other Failures:"):]
    assert "rank      : 1 (local_rank: 1)" in root and "exitcode  : -9 (pid:" in root, err
    assert "Signal 9 (SIGKILL) received by PID" in root, err
    assert "rank      : 0 (local_rank: 0)" in others and "exitcode  : 1 (pid:" in others, err
    assert "failed (exitcode: -9) local_rank: 1" in err


def test_rrun_lines_and_worker_lines_never_mix(tmp_path):
    # Workers inherit rrun's stderr (no --tee/--redirects): rank 0 makes rrun's store
    # log a line per bad connection while ranks 1 and 2 write lines as fast as they can
    # into the same pipe. Every line must come out whole.
    conns = 300
    p = launch("rrun", ["--nproc-per-node", 3, "--master-port", free_port(), worker("interleave.py")],
               env=base_env(IL_DIR=tmp_path, IL_CONNS=conns), timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    shapes = [
        re.compile(r"worker [12] line \d+ x{60}"),
        re.compile(r"rrun: store: closed connection from \S+: unknown command byte 238"),
        re.compile(r"[WEI]\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ \S+\] .*"),  # rrun's torch-format log lines
    ]
    lines = p.stderr.splitlines()
    broken = [line for line in lines if not any(s.fullmatch(line) for s in shapes)]
    assert not broken, f"{len(broken)} mixed lines, e.g. {broken[:3]}"
    assert sum(bool(shapes[1].fullmatch(line)) for line in lines) == conns
    assert sum(bool(shapes[0].fullmatch(line)) for line in lines) > 1000, "the workers wrote concurrently"
