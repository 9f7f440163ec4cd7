"""A trainer and a spawned worker in a ``/dev/shm`` too small for the model, run as
``python -m tests.helpers.small_shm BACKEND`` inside a private mount namespace whose
``/dev/shm`` the test made small. Prints one JSON line: what the trainer and the worker
raised, and what was left in ``/dev/shm`` once both had exited."""

from __future__ import annotations

import json
import os
import sys

import torch.multiprocessing as mp
from torch import nn

from tests.helpers.workers import REPLY_S
from weightsync import WeightSyncScheme


def _worker(scheme, pipe, ctl) -> None:
    try:
        scheme.init_on_receiver("policy", model=nn.Linear(1024, 1024), pipe=pipe)
        scheme.connect(timeout=60.0)
        ctl.send(("connected",))
    except Exception as err:
        ctl.send((type(err).__name__, str(err)))


def main() -> None:
    ctx = mp.get_context("spawn")
    scheme = WeightSyncScheme.from_backend(sys.argv[1], timeout=60.0)
    here, there = ctx.Pipe()
    ctl_here, ctl_there = ctx.Pipe()
    worker = ctx.Process(target=_worker, args=(scheme, there, ctl_there), daemon=True)
    worker.start()
    there.close()
    scheme.init_on_sender("policy", model=nn.Linear(1024, 1024), pipes=[here])  # 4 MiB
    try:
        scheme.connect()
        trainer = ("connected", "")
    except Exception as err:
        trainer = (type(err).__name__, str(err))
    worker_said = ctl_here.recv() if ctl_here.poll(REPLY_S) else ("silent", "")
    scheme.shutdown()
    worker.join(30)
    if worker.is_alive():
        worker.kill()
    left = sorted(os.listdir("/dev/shm"))
    print(json.dumps({"trainer": trainer, "worker": list(worker_said), "left": left}))


if __name__ == "__main__":
    main()
