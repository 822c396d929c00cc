"""Real PyTorch programs under rrun: gloo collectives with 4 ranks, and 2-node
static jobs formed by rrun agents alone and by rrun and torchrun agents together."""
import re

import pytest

from conftest import free_port, launch, popen, worker


def oks(text):
    # Untee'd workers share one pipe and print() writes text and newline separately,
    # so lines of different ranks may run together.
    return sorted(re.findall(r"OK rank (\d+/\d+)", text))


def test_gloo_four_ranks():
    p = launch("rrun", ["--nproc-per-node", 4, "--master-port", free_port(), worker("gloo_ops.py")], timeout=300)
    assert p.returncode == 0, p.stderr
    assert oks(p.stdout) == ["0/4", "1/4", "2/4", "3/4"]


@pytest.mark.parametrize("node0,node1", [("rrun", "rrun"), ("rrun", "torchrun"), ("torchrun", "rrun")])
def test_two_node_static_job(node0, node1):
    port = free_port()
    common = ["--nnodes", 2, "--nproc-per-node", 2, "--master-port", port]
    # Node 1 starts first: it must wait for node 0's store.
    p1 = popen(node1, [*common, "--node-rank", 1, worker("gloo_ops.py")])
    p0 = popen(node0, [*common, "--node-rank", 0, worker("gloo_ops.py")])
    out0, err0 = p0.communicate(timeout=300)
    out1, err1 = p1.communicate(timeout=300)
    assert p0.returncode == 0, err0
    assert p1.returncode == 0, err1
    assert oks(out0 + out1) == ["0/4", "1/4", "2/4", "3/4"]


def test_static_rdzv_endpoint_is_the_workers_master():
    # pytorch/examples' distributed/ddp run_example.sh shape: the default static backend
    # with --rdzv_endpoint. torchrun hosts its store at the endpoint and hands workers
    # MASTER_ADDR/MASTER_PORT from it (not --master-port's default 29500); the script
    # then joins through env:// itself.
    for launcher in ("torchrun", "rrun"):
        port = free_port()
        p = launch(launcher, ["--nnodes=1", "--nproc_per_node=2", "--rdzv_id=101", f"--rdzv_endpoint=localhost:{port}",
                              worker("ddp_env.py")], timeout=120)
        assert p.returncode == 0, (launcher, p.stderr[-3000:])
        seen = sorted(re.findall(r"DDP rank (\d)/2 master (\S+) sum 3", p.stdout))
        assert seen == [("0", f"localhost:{port}"), ("1", f"localhost:{port}")], (launcher, p.stdout)
