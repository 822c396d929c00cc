"""Rank 1 dies of SIGKILL; rank 0 exits 1 a moment later, in the same wall-clock second.

SK_AT (unix seconds, a whole second a few seconds ahead) aligns the ranks: rank 1
kills itself at SK_AT + 0.1; rank 0 exits 1 at SK_AT + 0.3, or at once when the
agent's SIGTERM reaches it (it "notices" the failure and exits 1 on its own account).
No torch import, so it starts fast.
"""
import os
import signal
import sys
import time

at = float(os.environ["SK_AT"])
rank = int(os.environ["RANK"])


def sleep_until(t):
    while (left := t - time.time()) > 0:
        time.sleep(left)


if rank == 1:
    sleep_until(at + 0.1)
    os.kill(os.getpid(), signal.SIGKILL)
elif rank == 0:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sleep_until(at + 0.3)
    sys.exit(1)
else:
    time.sleep(60)
