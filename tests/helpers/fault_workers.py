"""Processes for the reliability tests (importable by spawned children).

* :func:`stress_reader`: a worker that reads its whole model as fast as it can and counts every
  read that mixes versions (the trainer writes version ``k`` as "every parameter equals k");
* :func:`ready_then_serve`: the command-driven worker of ``workers.py``, announcing itself first;
* :func:`trainer_with_workers`: a trainer that spawns its own workers, reports their process ids
  and sends forever: the test kills it with SIGKILL and watches the workers go.
"""

from __future__ import annotations

import os
import time

import torch
import torch.multiprocessing as mp
from torch import nn

from weightsync import PeerDiedError, WeightSyncScheme


def uniform_model(width: int = 256, depth: int = 4) -> nn.Module:
    """A buffer-free MLP (about ``depth * width**2`` float32 parameters)."""
    return nn.Sequential(*(nn.Linear(width, width) for _ in range(depth)))


@torch.no_grad()
def fill_version(model: nn.Module, version: int) -> None:
    """Make ``version`` readable from the weights: every parameter equals it."""
    for param in model.parameters():
        param.fill_(float(version))


@torch.no_grad()
def read_versions(model: nn.Module) -> tuple[float, float]:
    """The smallest and largest value over the whole model (equal unless versions are mixed)."""
    lo, hi = float("inf"), float("-inf")
    for param in model.parameters():
        p_lo, p_hi = torch.aminmax(param)
        lo, hi = min(lo, float(p_lo)), max(hi, float(p_hi))
    return lo, hi


def stress_reader(scheme, pipe, ctl, slow_every: int = 0, slow_s: float = 0.0) -> None:
    """Read the model after every ``receive`` until the trainer shuts down; report counts.

    With ``slow_every`` > 0, every ``slow_every``-th round first sleeps ``slow_s`` seconds (longer
    than the trainer's timeout), so the trainer gives up on this worker and moves on while an
    update is still queued for it: the late copy must still be one complete version.
    """
    try:
        ctl.send(("ready", os.getpid()))
        model = uniform_model()
        fill_version(model, -1)
        scheme.init_on_receiver("policy", model=model, pipe=pipe)
        scheme.connect(timeout=60.0)  # the trainer connects once every sibling is up
        receiver = scheme.get_receiver()
        stats = {"reads": 0, "mixed": 0, "mislabelled": 0, "backwards": 0, "versions": set()}
        first_bad = None
        last = -1
        rounds = 0
        while not scheme.closed:
            rounds += 1
            if slow_every and rounds % slow_every == 0:
                time.sleep(slow_s)
            scheme.receive(0.0005)
            lo, hi = read_versions(model)
            version = receiver.version
            stats["reads"] += 1
            stats["versions"].add(version)
            if lo != hi:
                stats["mixed"] += 1
            elif lo != version:
                stats["mislabelled"] += 1
            if version < last:
                stats["backwards"] += 1
            if first_bad is None and (lo != hi or lo != version or version < last):
                first_bad = (version, lo, hi, last)
            last = version
        stats["versions"] = len(stats["versions"])
        stats["first_bad"] = first_bad
        ctl.send(("stats", stats))
    except Exception as err:
        ctl.send(("error", type(err).__name__, str(err)))


def ready_then_serve(scheme, pipe, ctl) -> None:
    """Say ``("ready", pid)`` once imports are done, then run :func:`serve` (the trainer connects
    only when every worker is ready, so the scheme's timeout can be short)."""
    from tests.helpers.workers import serve

    ctl.send(("ready", os.getpid()))
    scheme.timeout = max(scheme.timeout, 60.0)  # connect() waits for the slowest sibling to start
    serve(scheme, pipe, ctl)


def _worker_until_trainer_dies(scheme, pipe) -> None:
    """A grandchild worker: receive until the trainer is gone (PeerDiedError), then exit."""
    from tests.helpers.models import make_model

    scheme.init_on_receiver("policy", model=make_model(1), pipe=pipe)
    try:
        scheme.connect(timeout=60.0)
        while not scheme.closed:
            scheme.receive(0.01)
    except PeerDiedError:  # the trainer is gone: exit quietly
        pass


def trainer_with_workers(backend: str, num_workers: int, ctl) -> None:
    """Spawn workers, connect, report their pids, then send updates until killed."""
    from tests.helpers.models import make_model, perturb

    ctx = mp.get_context("spawn")
    scheme = WeightSyncScheme.from_backend(backend, timeout=60.0)  # slow nested spawns
    pipes, workers = [], []
    for _ in range(num_workers):
        here, there = ctx.Pipe()
        worker = ctx.Process(target=_worker_until_trainer_dies, args=(scheme, there), daemon=True)
        worker.start()
        there.close()  # only the worker holds its end: the trainer's death is its EOF
        pipes.append(here)
        workers.append(worker)
    model = make_model(0)
    scheme.init_on_sender("policy", model=model, pipes=pipes)
    scheme.send_async()  # connect(), with time for freshly spawned workers to start
    scheme.wait_async(timeout=60.0)
    ctl.send(("workers", [w.pid for w in workers]))
    step = 0
    while True:
        step += 1
        perturb(model, 1)
        scheme.send()
        time.sleep(0.01)


def meta_worker(scheme, pipe, ctl) -> None:
    """A worker whose model is on the meta device (never materialised): report what its
    ``connect()`` raised and the version its receiver then claims, as ``("refused", type,
    message, version)`` (or ``("connected", version)``)."""
    from tests.helpers.models import make_model

    ctl.send(("ready", os.getpid()))
    scheme.timeout = max(scheme.timeout, 60.0)
    scheme.init_on_receiver("policy", model=make_model(1).to("meta"), pipe=pipe)
    try:
        scheme.connect()
    except Exception as err:
        ctl.send(("refused", type(err).__name__, str(err), scheme.get_receiver().version))
    else:
        ctl.send(("connected", scheme.get_receiver().version))
    scheme.shutdown()
