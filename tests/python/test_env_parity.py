"""Worker environment and argv under rrun equal torchrun's, key for key, in several
configurations (only run id, ports and temp paths may differ)."""
import json
import re
import subprocess

import pytest

from conftest import PYTHON, WORKERS, base_env, free_port, launch, popen, worker

ALLOWED_TO_DIFFER = {"_", "DUMP_DIR"}


def run_both(tmp_path, args, env_extra=None, nodes=1):
    dumps = {}
    for launcher in ("torchrun", "rrun"):
        d = tmp_path / launcher
        d.mkdir()
        env = base_env(DUMP_DIR=d, **(env_extra or {}))
        if nodes == 1:
            p = launch(launcher, args, env=env)
            assert p.returncode == 0, p.stderr
        else:
            port = free_port()
            procs = [popen(launcher, ["--nnodes", nodes, "--node-rank", n, "--master-port", port, *args], env=env)
                     for n in reversed(range(nodes))]
            for p in procs:
                _, err = p.communicate(timeout=120)
                assert p.returncode == 0, err
        dumps[launcher] = {int(f.stem): json.loads(f.read_text()) for f in d.glob("*.json")}
    return dumps["torchrun"], dumps["rrun"]


def normalize(env):
    run_id = env["TORCHELASTIC_RUN_ID"]
    out = dict(env)
    out["TORCHELASTIC_ERROR_FILE"] = re.sub(r"torchelastic_[a-z0-9_]{8}", "torchelastic_X",
                                            env["TORCHELASTIC_ERROR_FILE"]).replace(run_id, "RUNID")
    out["TORCHELASTIC_ERROR_FILE"] = re.sub(r"RUNID_[a-z0-9_]{8}", "RUNID_X", out["TORCHELASTIC_ERROR_FILE"])
    return out


def assert_same(t, r, may_differ=()):
    assert sorted(t) == sorted(r), "same ranks"
    for rank in t:
        te, re_ = normalize(t[rank]["env"]), normalize(r[rank]["env"])
        skip = ALLOWED_TO_DIFFER | set(may_differ)
        diff = {k: (te.get(k), re_.get(k)) for k in set(te) | set(re_) if k not in skip and te.get(k) != re_.get(k)}
        assert not diff, f"rank {rank}: torchrun vs rrun differ: {diff}"
        assert t[rank]["argv"] == r[rank]["argv"], f"rank {rank} argv"


@pytest.mark.parametrize("name,args,env", [
    ("one_rank", ["--nproc-per-node", 1], {}),
    ("three_ranks_omp_unset", ["--nproc-per-node", 3], {}),
    ("omp_and_cvd_set", ["--nproc-per-node", 2], {"OMP_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "0,1"}),
    ("virtual_local_rank", ["--nproc-per-node", 2, "--virtual-local-rank"], {"CUDA_VISIBLE_DEVICES": "3,5"}),
    ("role_restarts_and_args", ["--nproc_per_node=2", "--role", "trainer", "--max-restarts", 3], {}),
])
def test_single_node_static(tmp_path, name, args, env):
    port = free_port()
    t, r = run_both(tmp_path, [*args, "--master-port", port, worker("dump_env.py"), "--lr", "0.1"], env)
    assert len(r) == (3 if name == "three_ranks_omp_unset" else 1 if name == "one_rank" else 2)
    assert_same(t, r)
    if name == "three_ranks_omp_unset":
        assert r[2]["env"]["OMP_NUM_THREADS"] == "1"
    if name == "one_rank":
        assert "OMP_NUM_THREADS" not in r[0]["env"]
    if name == "virtual_local_rank":
        assert (r[1]["env"]["LOCAL_RANK"], r[1]["env"]["CUDA_VISIBLE_DEVICES"]) == ("0", "5")


def test_script_args_pass_through(tmp_path):
    t, r = run_both(tmp_path, ["--master-port", free_port(), worker("dump_env.py"), "--nproc-per-node", "9", "-m"])
    assert r[0]["argv"] == [PYTHON, "-u", worker("dump_env.py"), "--nproc-per-node", "9", "-m"]
    assert_same(t, r)


def test_module_and_no_python_modes(tmp_path):
    env = {"PYTHONPATH": str(WORKERS)}
    (tmp_path / "m").mkdir()
    (tmp_path / "n").mkdir()
    t, r = run_both(tmp_path / "m", ["--master-port", free_port(), "-m", "dump_env", "x"], env)
    assert r[0]["argv"][:4] == [PYTHON, "-u", "-m", "dump_env"]
    assert_same(t, r)
    t, r = run_both(tmp_path / "n", ["--master-port", free_port(), "--no-python", PYTHON, worker("dump_env.py")])
    assert r[0]["argv"] == [PYTHON, worker("dump_env.py")]
    assert_same(t, r)


def test_standalone(tmp_path):
    t, r = run_both(tmp_path, ["--standalone", "--nproc-per-node", 2, worker("dump_env.py")])
    assert_same(t, r, may_differ={"MASTER_PORT", "TORCHELASTIC_RUN_ID"})
    assert re.fullmatch(r"[0-9a-f-]{36}", r[0]["env"]["TORCHELASTIC_RUN_ID"])
    assert r[0]["env"]["MASTER_PORT"] != "29500"


def test_two_node_static(tmp_path):
    t, r = run_both(tmp_path, ["--nproc-per-node", 2, worker("dump_env.py")], nodes=2)
    assert sorted(r) == [0, 1, 2, 3]
    assert r[3]["env"]["GROUP_RANK"] == "1" and r[3]["env"]["WORLD_SIZE"] == "4"
    assert_same(t, r, may_differ={"MASTER_PORT"})  # each run used its own free port
