"""The sync step of the training loop, and what it costs.

:class:`SyncStep` owns the trainer's side of the weight-sync scheme: it connects it, pushes the
trainer's weights in two halves, :meth:`~SyncStep.start` (``send_async``) right after an update
and :meth:`~SyncStep.wait` (``wait_async``) right before the next ``optimizer.step()``, which the
learner calls through its ``before_step`` hook, and shuts it down. In between the trainer gathers
rollouts and runs forward/backward passes while the copy proceeds. The cost recorded is what the
trainer actually waits: the time blocked in both halves, per sync.

A failed sync that names workers goes to ``on_failure`` (the crew's failure policy: stop the
run, or drop them and go on); versions are mapped to the number of updates they contain, for the
staleness metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from torch import nn

from experiments.actor import MODEL_ID
from experiments.common.stats import model_bytes
from weightsync import PeerDiedError, SyncTimeoutError, WeightSyncScheme


class SyncStep:
    """Sends the trainer's ``policy`` through ``scheme`` and measures each send.

    Args:
        scheme: the trainer's scheme, not yet initialised (:meth:`connect` does it).
        policy: the model sent.
        on_failure: called with ``(workers, reason)`` when the scheme names failed workers.
        before_send: called before each send (e.g. to drop workers known to be dead).

    Attributes:
        version: the latest weight version sent.
        latencies_ms: the time the trainer was blocked, one entry per sync.
        bytes_moved: weight bytes moved by all syncs so far.
        updates_in_version: ``{weight version: learner updates it contains}``; version 0 is the
            workers' initial weights (identical to the trainer's, both seeded alike).
    """

    def __init__(
        self,
        scheme: WeightSyncScheme,
        policy: nn.Module,
        *,
        on_failure: Callable[[list[int], str], None],
        before_send: Callable[[], None] = lambda: None,
    ) -> None:
        self.scheme = scheme
        self.policy = policy
        self.on_failure = on_failure
        self.before_send = before_send
        self.model_bytes = model_bytes(policy)
        self.receivers: list[int] = []
        self.latencies_ms: list[float] = []
        self.bytes_moved = 0
        self.version = 0
        self.updates_in_version = {0: 0}
        self._blocked_s: float | None = None  # time blocked so far in the pending sync

    def connect(self, workers: list[int], **endpoints: Any) -> None:
        """Initialise the trainer's side for ``workers`` (reached through ``endpoints``, e.g. their
        weight pipes) and send them the initial weights."""
        self.receivers = list(workers)
        self.scheme.init_on_sender(MODEL_ID, model=self.policy, **endpoints)
        self.scheme.connect()
        self.version = self.scheme.get_sender().version
        self.updates_in_version[self.version] = 0

    def start(self, num_updates: int) -> None:
        """Start sending the current weights, which contain ``num_updates`` updates."""
        self.before_send()
        began = time.perf_counter()
        try:
            self._send_async(num_updates)
        except (PeerDiedError, SyncTimeoutError) as err:
            self._failed(err)
            self._send_async(num_updates)  # the survivors still need the new weights
        self.bytes_moved += self.model_bytes * self.scheme.get_sender().transport.copies_per_send
        self._blocked_s = time.perf_counter() - began

    def wait(self) -> None:
        """Finish the pending sync, if any (the learner's ``before_step`` hook)."""
        if self._blocked_s is None:
            return
        began = time.perf_counter()
        try:
            self.scheme.wait_async()
        except (PeerDiedError, SyncTimeoutError) as err:
            self._failed(err)
        self.latencies_ms.append(1e3 * (self._blocked_s + time.perf_counter() - began))
        self._blocked_s = None

    def flush(self, num_updates: int) -> None:
        """Make sure the workers get the weights of ``num_updates`` updates, and wait for it."""
        self.wait()
        if self.updates_in_version[self.version] != num_updates:
            self.start(num_updates)
            self.wait()

    def remove(self, workers: list[int]) -> None:
        """Stop sending to ``workers`` (the run goes on without them)."""
        self.receivers = [w for w in self.receivers if w not in workers]
        self.scheme.get_sender().remove_workers(workers)

    def shutdown(self) -> None:
        """Shut the scheme down (its workers see it closed)."""
        self.scheme.shutdown()

    def _failed(self, err: PeerDiedError | SyncTimeoutError) -> None:
        if not err.workers:
            raise err
        self.on_failure(err.workers, str(err))

    def _send_async(self, num_updates: int) -> None:
        # Recorded before sending: a worker may adopt the version before send_async returns.
        sender = self.scheme.get_sender()
        self.updates_in_version[sender.version + 1] = num_updates
        sender.send_async()
        self.version = sender.version
