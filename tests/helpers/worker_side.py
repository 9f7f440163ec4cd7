"""Worker processes for the worker-side reliability tests (importable by spawned children).

Each reports on its control pipe: ``("ready", pid)`` once it is up, its findings as
``("stats", dict)``, or ``("error", type name, message)``.
"""

from __future__ import annotations

import copy
import logging
import os
import time

import torch
from torch import nn

from tests.helpers.fault_workers import fill_version, ready_then_serve, uniform_model


class _CountingHandler(logging.Handler):
    """Counts the warnings weightsync logs in this process."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def refusing_reader(scheme, pipe, ctl) -> None:
    """Adopt the initial weights, then change the model's structure so that it refuses every
    update, and keep reading the weights it kept while the trainer goes on sending.

    Reports how many reads found a kept tensor changed (``changed``) or not one value throughout
    (``torn``), the version it holds and how many warnings it logged.
    """
    try:
        warnings = _CountingHandler()
        logging.getLogger("weightsync").addHandler(warnings)
        ctl.send(("ready", os.getpid()))
        model = uniform_model()
        fill_version(model, -1)
        scheme.init_on_receiver("policy", model=model, pipe=pipe)
        scheme.connect(timeout=60.0)
        kept = [p.detach() for p in model.parameters()]
        held = float(kept[0].flatten()[0])
        model.extra = nn.Parameter(torch.zeros(1))  # from now on no update fits
        ctl.send(("misfit", scheme.get_receiver().version))
        stats = {"reads": 0, "changed": 0, "torn": 0}
        while not scheme.closed:
            scheme.receive(0.0005)
            stats["reads"] += 1
            values = [torch.aminmax(t) for t in kept]
            lo = min(float(v[0]) for v in values)
            hi = max(float(v[1]) for v in values)
            stats["changed"] += lo != held or hi != held
            stats["torn"] += lo != hi
        stats.update(version=scheme.get_receiver().version, warnings=warnings.count)
        ctl.send(("stats", stats))
    except Exception as err:
        ctl.send(("error", type(err).__name__, str(err)))


def slow_to_start(scheme, pipe, ctl, delay_s: float) -> None:
    """A worker that starts ``delay_s`` seconds late (a slow import, a busy machine), then runs
    the command-driven worker of ``workers.py``."""
    time.sleep(delay_s)
    ready_then_serve(scheme, pipe, ctl)


def _reshape_last_parameter(model: nn.Module) -> None:
    last = list(model.parameters())[-1]
    last.data = torch.zeros(last.numel() + 1)  # no registration: only the tensor changed


MUTATIONS = {"reshape-last": _reshape_last_parameter, "double": lambda model: model.double()}


def mutated_worker(scheme, pipe, ctl, mutation: str) -> None:
    """Connect, then change the model without registering anything (``MUTATIONS``), and keep
    receiving until the trainer shuts down. Reports ``("mutated",)``, then ``("stats", dict)``:
    the version held at the end and whether the model is still exactly as it was mutated."""
    from tests.helpers.models import make_model, same_weights

    try:
        ctl.send(("ready", os.getpid()))
        model = make_model(1)
        scheme.init_on_receiver("policy", model=model, pipe=pipe)
        scheme.connect(timeout=60.0)
        MUTATIONS[mutation](model)
        as_mutated = copy.deepcopy(model)
        ctl.send(("mutated",))
        while not scheme.closed:
            scheme.receive(0.005)
        stats = {
            "version": scheme.get_receiver().version,
            "unchanged": same_weights(model, as_mutated),
            "dtype": str(next(model.parameters()).dtype),
        }
        ctl.send(("stats", stats))
    except Exception as err:
        ctl.send(("error", type(err).__name__, str(err)))


def receive_then_connect(scheme, pipe, ctl) -> None:
    """Call ``receive()`` until the initial weights arrive, then ``connect()``, and report
    ``("connected", version received, version after connect)``; then wait for version 2 and
    report ``("stats", version)``."""
    from tests.helpers.models import make_model

    try:
        ctl.send(("ready", os.getpid()))
        scheme.init_on_receiver("policy", model=make_model(1), pipe=pipe)
        deadline = time.monotonic() + 60.0
        while not scheme.receive(0.01) and time.monotonic() < deadline:
            pass
        received = scheme.get_receiver().version
        scheme.connect(timeout=2.0)
        ctl.send(("connected", received, scheme.get_receiver().version))
        while scheme.get_receiver().version < 2 and time.monotonic() < deadline:
            scheme.receive(0.01)
        ctl.send(("stats", scheme.get_receiver().version))
        while not scheme.closed:
            scheme.receive(0.01)
    except Exception as err:
        ctl.send(("error", type(err).__name__, str(err)))


def connect_and_report(scheme, pipe, ctl) -> None:
    """Connect (waiting up to a minute) and report ``("connected", version)`` or the error."""
    from tests.helpers.models import make_model

    try:
        ctl.send(("ready", os.getpid()))
        scheme.init_on_receiver("policy", model=make_model(1), pipe=pipe)
        scheme.connect(timeout=60.0)
        ctl.send(("connected", scheme.get_receiver().version))
        scheme.shutdown()
    except Exception as err:
        ctl.send(("error", type(err).__name__, str(err)))


def threaded_reader(scheme, pipe, ctl) -> None:
    """Receive in the main thread while a second thread reads the whole model inside
    ``scheme.reading()`` as fast as it can; report how many reads mixed versions."""
    import threading

    from tests.helpers.fault_workers import read_versions

    try:
        ctl.send(("ready", os.getpid()))
        model = uniform_model()
        fill_version(model, -1)
        scheme.init_on_receiver("policy", model=model, pipe=pipe)
        scheme.connect(timeout=60.0)
        stats = {"reads": 0, "mixed": 0}
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                with scheme.reading():
                    lo, hi = read_versions(model)
                stats["reads"] += 1
                stats["mixed"] += lo != hi

        reader = threading.Thread(target=read)
        reader.start()
        try:
            while not scheme.closed:
                scheme.receive(0.001)
        finally:
            stop.set()
            reader.join(30)
        stats["version"] = scheme.get_receiver().version
        ctl.send(("stats", stats))
    except Exception as err:
        ctl.send(("error", type(err).__name__, str(err)))


def aliasing_worker(scheme, pipe, ctl) -> None:
    """A shared-mem worker whose parameters alias the snapshot it adopted (a model of large
    tensors). Commands: ``("write",)``: add 1 to its first parameter in place, reply
    ``("wrote",)`` if it survives; ``("apply",)``: ``receiver.apply_weights`` of all zeros, reply
    ``("applied",)``; ``("read",)``: reply ``("read", lowest, highest, version)``;
    ``("stop",)``."""
    from tests.helpers.fault_workers import read_versions

    try:
        ctl.send(("ready", os.getpid()))
        model = uniform_model()
        fill_version(model, -1)
        scheme.init_on_receiver("policy", model=model, pipe=pipe)
        scheme.connect(timeout=60.0)
        while True:
            scheme.receive(0.002)
            if not ctl.poll(0.002):
                continue
            command = ctl.recv()[0]
            if command == "stop":
                break
            if command == "write":
                with torch.no_grad():
                    next(model.parameters()).add_(1.0)
                ctl.send(("wrote",))
            elif command == "apply":  # the receiver's own API for writing the model
                zeros = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
                scheme.get_receiver().apply_weights(zeros)
                ctl.send(("applied",))
            elif command == "read":
                ctl.send(("read", *read_versions(model), scheme.get_receiver().version))
        scheme.shutdown()
    except Exception as err:
        ctl.send(("error", type(err).__name__, str(err)))
