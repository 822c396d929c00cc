"""Real NCCL collectives, one GPU per process: all_reduce, broadcast, barrier,
send/recv. The NCCL unique ids travel through the launcher's store."""
import os
import time

import torch
import torch.distributed as dist

lr = int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(lr)
dist.init_process_group("nccl", device_id=torch.device("cuda", lr))
r, w = dist.get_rank(), dist.get_world_size()
t = torch.full((4096,), float(r + 1), device="cuda", dtype=torch.bfloat16)
dist.all_reduce(t)
assert t[0].item() == w * (w + 1) / 2, t[0]
b = torch.full((8,), float(r), device="cuda")
dist.broadcast(b, src=w - 1)
assert b[0].item() == w - 1
dist.barrier()
if w > 1:
    if r == 0:
        dist.send(torch.tensor([42.0], device="cuda"), dst=1)
    elif r == 1:
        x = torch.zeros(1, device="cuda"); dist.recv(x, src=0); assert x.item() == 42.0
torch.cuda.synchronize()
# 4096-value bf16 all-reduce latency, as in DEVELOPERS.md.
for _ in range(20):
    dist.all_reduce(t)
torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(200):
    dist.all_reduce(t)
torch.cuda.synchronize()
us = (time.perf_counter() - t0) / 200 * 1e6
print(f"OK rank {r}/{w} gpu={torch.cuda.get_device_name(lr)} nccl={torch.cuda.nccl.version()} allreduce4096={us:.1f}us", flush=True)
if os.environ.get("HOLD_SECONDS"):
    time.sleep(float(os.environ["HOLD_SECONDS"]))
dist.destroy_process_group()
