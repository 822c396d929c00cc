"""Store round trips through torch's own client against the launcher's store.
Each rank does N ADDs (one round trip each) and N SET+GET pairs; prints its rates."""
import datetime
import os
import time

from torch.distributed import TCPStore

n = int(os.environ.get("BENCH_OPS", "5000"))
s = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
             timeout=datetime.timedelta(seconds=60))
rank = os.environ["RANK"]
s.add(f"warm{rank}", 1)
t = time.perf_counter()
for _ in range(n):
    s.add(f"ctr{rank}", 1)
add_s = time.perf_counter() - t
t = time.perf_counter()
for i in range(n):
    s.set(f"k{rank}", b"x" * 64)
    s.get(f"k{rank}")  # WAIT + GET: two round trips
get_s = time.perf_counter() - t
print(f"BENCH rank={rank} add_s={add_s:.4f} setget_s={get_s:.4f} n={n}", flush=True)
