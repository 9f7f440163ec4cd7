"""A spawned worker driven the way TorchRL 0.14's collector drives a scheme, without torchrl:
``init_on_receiver(model=<meta policy>, model_id=..., worker_idx=i)``, ``connect(worker_idx=i)``,
no ``receive()`` from the worker's own loop, and a context whose ``update_policy_weights_`` the
scheme calls after each update."""

from __future__ import annotations

import time

import torch
from torch import nn

from tests.helpers.workers import report_threads_at_exit


class FakeWorkerCollector:
    """Stands in for TorchRL's worker-side collector: counts its policy version."""

    def __init__(self) -> None:
        self.policy_version = 0

    def update_policy_weights_(self, policy_or_weights=None, **kwargs) -> None:
        self.policy_version += 1


def meta_linear() -> nn.Linear:
    """What a TorchRL collector sends its workers: the policy's structure, without weights."""
    with torch.device("meta"):
        return nn.Linear(3, 2)


def collector_worker(scheme, worker_idx: int, ctl) -> None:
    """Report ``(weights, versions)`` whenever the controller asks; on ``"stop"`` return without
    ``shutdown()``, as a collector's worker does, and at exit send ``("threads", names)``."""
    report_threads_at_exit(ctl)
    policy = meta_linear()
    scheme.init_on_receiver(model=policy, model_id="policy", worker_idx=worker_idx)
    scheme.connect(worker_idx=worker_idx)
    collector = FakeWorkerCollector()
    scheme.context = collector
    while True:
        if not ctl.poll(30):
            return
        if ctl.recv() == "stop":
            return
        time.sleep(0.05)  # let the receiving thread pick up what the trainer just published
        state = {k: v.clone() for k, v in scheme.model.state_dict().items()}
        ctl.send((state, scheme.get_receiver().version, collector.policy_version))
