"""Processes for the reliability tests (importable by spawned children).

* :func:`stress_reader`: a worker that reads its whole model as fast as it can and counts every
  read that mixes versions (the trainer writes version ``k`` as "every parameter equals k");
* :func:`ready_then_serve`: the command-driven worker of ``workers.py``, announcing itself first;
* :func:`trainer_with_workers`: a trainer that spawns its own workers, reports their process ids
  and sends forever: the test kills it with SIGKILL, watches the workers go and reads what each
  worker's ``receive()`` raised from the file it left behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

from weightsync import WeightSyncScheme


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


def _worker_until_trainer_dies(scheme, pipe, outcome_path: str) -> None:
    """A grandchild worker: receive until the trainer is gone, then write how it ended to
    ``outcome_path`` (``"<error type>: <message>"``, or ``"closed"``) and exit. The file is how
    the test, which did not start this process, learns what the worker's ``receive()`` raised."""
    from tests.helpers.models import make_model

    outcome = "closed"
    try:
        scheme.init_on_receiver("policy", model=make_model(1), pipe=pipe)
        scheme.connect(timeout=120.0)
        while not scheme.closed:
            scheme.receive(0.01)
    except Exception as err:  # every way out is reported: the test judges it
        outcome = f"{type(err).__name__}: {err}"
    Path(outcome_path).write_text(outcome)


def trainer_with_workers(backend: str, num_workers: int, ctl, outcome_dir: str) -> None:
    """Spawn workers, connect, report their pids, then send updates until killed. Worker ``w``
    writes how its receive loop ended to ``<outcome_dir>/worker<w>``."""
    from tests.helpers.models import make_model, perturb

    ctx = mp.get_context("spawn")
    scheme = WeightSyncScheme.from_backend(backend, timeout=120.0)  # slow nested spawns
    pipes, workers = [], []
    for w in range(num_workers):
        here, there = ctx.Pipe()
        outcome_path = str(Path(outcome_dir) / f"worker{w}")
        worker = ctx.Process(
            target=_worker_until_trainer_dies, args=(scheme, there, outcome_path), daemon=True
        )
        worker.start()
        there.close()  # only the worker holds its end: the trainer's death is its EOF
        pipes.append(here)
        workers.append(worker)
    model = make_model(0)
    scheme.init_on_sender("policy", model=model, pipes=pipes)
    scheme.send_async()  # connect(), with time for freshly spawned workers to start
    scheme.wait_async(timeout=120.0)
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
