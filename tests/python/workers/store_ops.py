"""Every TCPStore operation through torch's own client, against whatever store
the launcher hosts at MASTER_ADDR:MASTER_PORT. Prints one JSON line of results."""
import datetime
import json
import os

from torch.distributed import TCPStore

s = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
             timeout=datetime.timedelta(seconds=30))
res = {}
def rec(name, fn):
    try:
        v = fn()
        res[name] = v.decode("latin1") if isinstance(v, bytes) else v
    except Exception as e:  # noqa: BLE001 - the exception type is the result
        res[name] = f"{type(e).__name__}: {e}"

s.set("k1", "v1")
rec("get", lambda: s.get("k1"))
rec("add5", lambda: s.add("cnt", 5))
rec("add-2", lambda: s.add("cnt", -2))
rec("get_cnt", lambda: s.get("cnt"))
rec("check_yes", lambda: s.check(["k1", "cnt"]))
rec("check_no", lambda: s.check(["nope"]))
rec("wait_ok", lambda: s.wait(["k1"]))
rec("wait_timeout", lambda: s.wait(["never"], datetime.timedelta(milliseconds=300)))
rec("cs1", lambda: s.compare_set("cs", "", "first"))
rec("cs2", lambda: s.compare_set("cs", "first", "second"))
rec("cs3", lambda: s.compare_set("cs", "zzz", "third"))
rec("cs_missing", lambda: s.compare_set("missing", "exp", "new"))
rec("check_missing", lambda: s.check(["missing"]))
s.set("m1", "x")
rec("del1", lambda: s.delete_key("m1"))
rec("del2", lambda: s.delete_key("m1"))
s.append("ap", "ab"); s.append("ap", "cd")
rec("append", lambda: s.get("ap"))
s.multi_set(["ms1", "ms2"], ["a", "b"])
rec("multi_get", lambda: [v.decode() for v in s.multi_get(["ms1", "ms2"])])
s.queue_push("q", "item1"); s.queue_push("q", "item2")
rec("qlen", lambda: s.queue_len("q"))
rec("qpop", lambda: s.queue_pop("q"))
rec("qpop_nb", lambda: s.queue_pop("q", block=False))
rec("qpop_empty", lambda: s.queue_pop("q", block=False))
rec("qlen_unknown", lambda: s.queue_len("nosuchq"))
rec("num_keys", lambda: s.num_keys())
rec("list_keys", lambda: sorted(s.list_keys()))
s.set("n", "abc")
print("RESULT " + json.dumps(res), flush=True)
