"""c10d rendezvous between rrun agents: group ranks by join order, a worker store on
an ephemeral port hosted by group rank 0, and elastic MIN:MAX with last call."""
import json
import socket
import threading
import time

from conftest import base_env, free_port, launch, popen, worker


def test_two_rrun_agents_c10d(tmp_path):
    port = free_port()
    env = base_env(DUMP_DIR=tmp_path)
    args = ["--nnodes", 2, "--nproc-per-node", 2, "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
            "--rdzv-id", "job7", worker("dump_env.py")]
    procs = [popen("rrun", args, env=env) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    envs = {int(f.stem): json.loads(f.read_text())["env"] for f in tmp_path.glob("*.json")}
    assert sorted(envs) == [0, 1, 2, 3]
    assert {envs[r]["GROUP_RANK"] for r in envs} == {"0", "1"}
    assert {envs[r]["WORLD_SIZE"] for r in envs} == {"4"}
    assert {envs[r]["TORCHELASTIC_RUN_ID"] for r in envs} == {"job7"}
    ports = {envs[r]["MASTER_PORT"] for r in envs}
    assert len(ports) == 1 and ports != {str(port)}, "workers use the worker store, not the rendezvous port"


def test_c10d_gloo_job_across_two_agents():
    port = free_port()
    args = ["--nnodes", 2, "--nproc-per-node", 1, "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
            worker("gloo_ops.py")]
    procs = [popen("rrun", args) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert "".join(o for o, _ in outs).count("OK rank") == 2


def test_elastic_range_starts_after_last_call(tmp_path):
    t = time.time()
    p = launch("rrun", ["--nnodes", "1:2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{free_port()}",
                        "--rdzv-conf", "last_call_timeout=1", "--no-python", "sh", "-c", "echo ws=$WORLD_SIZE"])
    assert p.returncode == 0, p.stderr
    assert "ws=1" in p.stdout
    assert 1.0 <= time.time() - t < 10


def test_implicit_host_takes_the_port_once_a_transient_holder_lets_go():
    """Both agents on the endpoint host can lose the bind to a stray socket holding the
    port; once it lets go, one of them must host rather than both waiting forever."""
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))  # bound, not listening: connects are refused
    threading.Timer(2.0, holder.close).start()
    t = time.time()
    args = ["--nnodes", 2, "--nproc-per-node", 1, "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
            "--rdzv-conf", "join_timeout=30", "--no-python", "sh", "-c", "echo rank=$RANK"]
    procs = [popen("rrun", args) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(o.strip() for o, _ in outs) == ["rank=0", "rank=1"]
    assert time.time() - t < 20
