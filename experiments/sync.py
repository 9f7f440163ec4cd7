"""The sync step of the training loop, and what it costs.

:class:`SyncStep` pushes the trainer's weights through the scheme in two halves: :meth:`start`
(``send_async``) right after an update, and :meth:`wait` (``wait_async``) right before the next
``optimizer.step()``, which PPOLearner calls through its ``before_step`` hook. In between the
trainer gathers rollouts and runs forward/backward passes while the copy proceeds. The cost
recorded is what the trainer actually waits: the time blocked in both halves, per sync.

A failed sync that names workers goes to the pool's failure policy (stop the run, or drop them and
go on); versions are mapped to the number of updates they contain, for the staleness metric.
"""

from __future__ import annotations

import time

from torch import nn

from experiments.pool import WorkerPool
from weightsync import (
    NoWeightSyncScheme,
    PeerDiedError,
    RayWeightSyncScheme,
    SharedMemWeightSyncScheme,
    SyncTimeoutError,
    WeightSyncScheme,
)


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model``: what one full copy moves."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def bytes_per_sync(scheme: WeightSyncScheme, size: int, num_workers: int) -> int:
    """Weight bytes one sync moves: none, one snapshot that every worker adopts in place
    (shared-mem), or one copy per worker (pipe, and any scheme that copies to each worker)."""
    if isinstance(scheme, NoWeightSyncScheme):
        return 0
    if isinstance(scheme, SharedMemWeightSyncScheme | RayWeightSyncScheme):
        return size  # ray: one put, pulled once to each other node with workers
    return size * num_workers


class SyncStep:
    """Sends the trainer's policy to the workers of ``pool`` and measures each send.

    Attributes:
        version: the latest weight version sent.
        latencies_ms: the time the trainer was blocked, one entry per sync.
        bytes_moved: weight bytes moved by all syncs so far.
        updates_in_version: ``{weight version: learner updates it contains}``; version 0 is the
            workers' initial weights (identical to the trainer's, both seeded alike).
    """

    def __init__(self, pool: WorkerPool, policy: nn.Module) -> None:
        self.pool = pool
        self.scheme = pool.scheme
        self.model_bytes = model_bytes(policy)
        self.latencies_ms: list[float] = []
        self.bytes_moved = 0
        self.version = self.scheme.get_sender().version  # connect() sent the initial weights
        self.updates_in_version = {0: 0, self.version: 0}
        self._blocked_s: float | None = None  # time blocked so far in the pending sync

    def start(self, num_updates: int) -> None:
        """Start sending the current weights, which contain ``num_updates`` updates."""
        self.pool.drop_dead()
        began = time.perf_counter()
        try:
            self._send_async(num_updates)
        except (PeerDiedError, SyncTimeoutError) as err:
            self.pool.handle_sync_error(err)
            self._send_async(num_updates)  # the survivors still need the new weights
        self.bytes_moved += bytes_per_sync(self.scheme, self.model_bytes, len(self.pool.active))
        self._blocked_s = time.perf_counter() - began

    def wait(self) -> None:
        """Finish the pending sync, if any (PPOLearner's ``before_step`` hook)."""
        if self._blocked_s is None:
            return
        began = time.perf_counter()
        try:
            self.scheme.wait_async()
        except (PeerDiedError, SyncTimeoutError) as err:
            self.pool.handle_sync_error(err)
        self.latencies_ms.append(1e3 * (self._blocked_s + time.perf_counter() - began))
        self._blocked_s = None

    def flush(self, num_updates: int) -> None:
        """Make sure the workers get the weights of ``num_updates`` updates, and wait for it."""
        self.wait()
        if self.updates_in_version[self.version] != num_updates:
            self.start(num_updates)
            self.wait()

    def _send_async(self, num_updates: int) -> None:
        # Recorded before sending: a worker may adopt the version before send_async returns.
        sender = self.scheme.get_sender()
        self.updates_in_version[sender.version + 1] = num_updates
        sender.send_async()
        self.version = sender.version
