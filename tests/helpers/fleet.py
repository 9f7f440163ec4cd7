"""A trainer (the test process) and spawned workers serving a control pipe, connected and ready
to be sent bad weights (``tests/weightsync/test_reliability_*.py``)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from tests.helpers.fault_workers import ready_then_serve
from tests.helpers.models import make_model
from tests.helpers.processes import Processes
from tests.helpers.workers import REPLY_S, ask
from weightsync import WeightSyncScheme

NUM_WORKERS = 2


class Fleet:
    """A trainer (this process) and spawned workers, shared by the tests of one backend."""

    def __init__(self, backend: str, *, reject_non_finite: bool = True):
        self.backend = backend
        self.procs = Processes()
        self.scheme = WeightSyncScheme.from_backend(
            backend, strategy="state_dict", timeout=10.0, reject_non_finite=reject_non_finite
        )
        self.model = make_model(0)
        self.context = SimpleNamespace(policy=self.model, models={"policy": self.model})
        pipes, self.controls = [], []
        for _ in range(NUM_WORKERS):
            here, there = self.procs.pipe()
            ctl_here, ctl_there = self.procs.pipe()
            self.procs.start(ready_then_serve, self.scheme, there, ctl_there)
            there.close()
            pipes.append(here)
            self.controls.append(ctl_here)
        for ctl in self.controls:
            assert ctl.poll(REPLY_S) and ctl.recv()[0] == "ready"
        self.scheme.init_on_sender("policy", context=self.context, pipes=pipes)
        self.scheme.connect()
        self.sender = self.scheme.get_sender()

    def ask(self, w: int, *command):
        return ask(self.controls[w], *command, timeout=30.0)

    def worker_states(self, version: int) -> list[tuple[int, dict]]:
        return [self.ask(w, "sync", version, 10.0)[1:] for w in range(NUM_WORKERS)]

    def assert_workers_hold(self, version: int, state: dict) -> None:
        for w, (held, got) in enumerate(self.worker_states(version)):
            assert held == version, f"worker {w} holds version {held}, expected {version}"
            for key, want in state.items():
                same = torch.equal(got[key], want) if torch.is_tensor(want) else got[key] == want
                assert same, f"worker {w}: {key!r} changed"

    def close(self) -> None:
        for ctl in self.controls:
            ctl.send(("stop",))
        self.scheme.shutdown()
        self.procs.close()
