"""c10d rendezvous between rrun agents: group ranks by join order, a worker store on
an ephemeral port hosted by group rank 0, and elastic MIN:MAX with last call."""
import json
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
