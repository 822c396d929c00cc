"""torch's TCPStore client, exercising every operation, gets the same results from
rrun's store as from torch's own server (hosted by torchrun's agent)."""
import json

from conftest import free_port, launch, worker


def results(launcher):
    p = launch(launcher, ["--master-port", free_port(), worker("store_ops.py")])
    assert p.returncode == 0, p.stderr
    line = next(l for l in p.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_every_operation_matches_torch():
    theirs, ours = results("torchrun"), results("rrun")
    assert ours == theirs
    # And the semantics themselves, as the spec records them.
    assert ours["cs3"] == "second" and ours["cs_missing"] == "exp" and ours["check_missing"] is False
    assert ours["qpop_empty"] == "QueueEmptyError: queue is empty"
    assert ours["wait_timeout"].startswith("DistStoreError: wait timeout after 300ms")
    assert "none/torchelastic/assigned_ranks/0" in ours["list_keys"]
