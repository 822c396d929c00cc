"""Workers and rrun writing to one inherited stderr at the same time.

Rank 0 waits until the other ranks are writing (IL_DIR/<rank>.ready), then opens
IL_CONNS connections to the agent's store (MASTER_ADDR:MASTER_PORT), each sending an
invalid command byte (238): rrun's store logs one line for each connection it closes.
Meanwhile every other rank writes whole lines, one os.write each,
`worker <rank> line <i> xxx…`, until rank 0 is done (IL_DIR/done) or 60 s pass.
No torch import.
"""
import os
import socket
import time

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
d = os.environ["IL_DIR"]
done = os.path.join(d, "done")

if rank == 0:
    deadline = time.time() + 30
    while len([f for f in os.listdir(d) if f.endswith(".ready")]) < world - 1 and time.time() < deadline:
        time.sleep(0.01)
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    for _ in range(int(os.environ.get("IL_CONNS", "300"))):
        with socket.create_connection((addr, port), timeout=10) as s:
            s.sendall(b"\xee")
            while s.recv(64):  # the store closes the connection
                pass
    with open(done, "w"):
        pass
else:
    end = time.time() + 60
    i = 0
    with open(os.path.join(d, f"{rank}.ready"), "w"):
        pass
    while time.time() < end:
        for _ in range(50):
            os.write(2, f"worker {rank} line {i} {'x' * 60}\n".encode())
            i += 1
        if os.path.exists(done):
            break
