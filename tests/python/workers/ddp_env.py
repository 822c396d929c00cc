"""Start-up of a typical DDP script launched by torchrun: read the launcher's
environment, join the process group through env:// (gloo), one all_reduce, destroy.
Each rank prints `DDP rank R/W master ADDR:PORT sum S` in one write."""
import datetime
import os

import torch
import torch.distributed as dist

addr, port = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
dist.init_process_group("gloo", init_method="env://", timeout=datetime.timedelta(seconds=30))
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
assert t.item() == world * (world + 1) / 2, t
os.write(1, f"DDP rank {rank}/{world} master {addr}:{port} sum {t.item():g}\n".encode())
dist.destroy_process_group()
