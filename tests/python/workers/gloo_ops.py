"""Real collectives over gloo: all_reduce, broadcast, barrier, send/recv."""
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
r, w = dist.get_rank(), dist.get_world_size()
t = torch.tensor([float(r + 1)])
dist.all_reduce(t)
assert t.item() == w * (w + 1) / 2, t
b = torch.tensor([float(r)])
dist.broadcast(b, src=w - 1)
assert b.item() == w - 1, b
dist.barrier()
nxt, prv = (r + 1) % w, (r - 1) % w
if r % 2 == 0:
    dist.send(torch.tensor([float(r)]), dst=nxt)
    x = torch.zeros(1); dist.recv(x, src=prv)
else:
    x = torch.zeros(1); dist.recv(x, src=prv)
    dist.send(torch.tensor([float(r)]), dst=nxt)
assert x.item() == prv, x
dist.destroy_process_group()
print(f"OK rank {r}/{w} sum={t.item()}", flush=True)
