"""The contracts between endpoints and transports, and TorchRL's legacy transport protocol.

A transport moves flat weight buffers between one trainer and its workers; it knows nothing of
models. Two protocols declare everything an endpoint may call on one:

* :class:`SenderTransport`, the trainer side, driven by :class:`~weightsync.WeightSender`;
* :class:`ReceiverTransport`, one worker's side, driven by :class:`~weightsync.WeightReceiver`,
  which it hands each new version as an :class:`Update`.

A new backend is these two protocols plus a small scheme class that builds them (see
``weightsync/schemes/``). :class:`TransportBackend` is the older, message-level protocol of
TorchRL's ``torchrl.weight_update`` (``send_weights``/``receive_weights``), which a user may still
implement and which :class:`~weightsync.MPTransport` offers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from weightsync.flat import FlatBuffer
from weightsync.weights import FlatWeights

if TYPE_CHECKING:
    from weightsync.transports.workers import ProcessHandle


class Update(NamedTuple):
    """A new version of a model's weights, as a worker-side transport presents it.

    ``zero_copy`` says the buffer is an immutable published snapshot the worker may alias (its
    parameters become views of it); otherwise the worker must copy out before acknowledging.
    """

    model_id: str
    version: int
    buffer: FlatBuffer
    zero_copy: bool


class SetupFailed:
    """What a worker receives instead of an update when the trainer could not set it up (e.g. a
    ``/dev/shm`` too small for the shared buffers): the worker raises at once, with ``reason``,
    instead of waiting out its timeout."""

    def __init__(self, reason: str):
        self.reason = reason


@runtime_checkable
class SenderTransport(Protocol):
    """The trainer side of a transport: everything :class:`~weightsync.WeightSender` calls.

    A send is two calls: :meth:`start` (the update is on its way; the weights may not change
    until :meth:`finish` returns) and :meth:`finish` (every chosen worker has it, or an error
    names those that do not).
    """

    #: False for a transport that moves nothing (``sync=none``): the sender then extracts nothing.
    carries_weights: bool
    #: True when the transport places GPU weights itself (and warns when it copies them through
    #: host memory); False: its buffers are in host memory, and the sender warns.
    device_direct: bool

    @property
    def acked_versions(self) -> dict[int, int | None]:
        """Per live worker, the version it is known to hold (None: unknown or none yet)."""

    @property
    def shared_bytes(self) -> int:
        """Bytes of shared memory the transport holds for its workers (snapshots, staging
        buffers); 0 when its buffers are private. What a benchmark reports as its memory."""

    @property
    def copies_per_send(self) -> int:
        """Full copies of the weights one send moves out of the trainer's buffer: one per live
        worker over private links, one for all over shared memory or an object store, one per
        host with workers for a per-host fan-out, none when nothing moves. What the framework
        counts as bytes moved."""

    def watch_processes(self, processes: Sequence[ProcessHandle] | None) -> None:
        """The workers' processes where the trainer knows them, indexed by worker id (read at
        each wait, so the sequence may be filled later): a wait for a worker also ends when its
        process exits, and the error names it with its exit code. A transport with nothing to
        wait for ignores them."""

    def source_buffer(self, weights: FlatWeights) -> FlatBuffer | None:
        """A flat buffer laid out for ``weights`` that the trainer's model may live in, so a send
        copies one block (or nothing); None when this transport offers none."""

    def retired(self, buffer: FlatBuffer) -> bool:
        """Whether a buffer handed out by :meth:`source_buffer` must no longer be written (a
        worker that timed out may still read it); the trainer's model then moves out of it."""

    def start(
        self,
        model_id: str,
        version: int,
        weights: FlatWeights,
        worker_ids: list[int] | None,
        *,
        source: FlatBuffer | None = None,
    ) -> None:
        """Begin delivering ``weights`` as ``version`` to ``worker_ids`` (None: all live workers).

        ``source`` is the buffer the weights already live in (from :meth:`source_buffer`), if
        any. Raises before anything moves when the request itself is wrong (unknown workers)."""

    def finish(self, timeout: float | None = None) -> None:
        """Block until the update in flight is delivered; raise naming each worker that failed
        (:class:`~weightsync.SyncTimeoutError`, :class:`~weightsync.PeerDiedError`,
        :class:`~weightsync.WorkerRejectedError`)."""

    def remove_workers(self, worker_ids: list[int]) -> None:
        """Go on without these workers (dead or retired)."""

    def close(self) -> None:
        """Tell the workers no more updates will come and release everything."""


@runtime_checkable
class ReceiverTransport(Protocol):
    """One worker's side of a transport: everything :class:`~weightsync.WeightReceiver` calls."""

    #: False for a transport on which nothing ever arrives (``sync=none``): connect() waits for
    #: no initial weights.
    carries_weights: bool

    @property
    def closed(self) -> bool:
        """True once the trainer has shut the connection down."""

    def poll(self, timeout: float) -> Update | None:
        """The newest update not yet answered, if one arrives within ``timeout`` s; raises
        :class:`~weightsync.PeerDiedError` when the trainer is gone."""

    def acknowledge(self, update: Update) -> None:
        """The worker now holds ``update`` (for zero-copy updates: its model points into it)."""

    def reject(self, update: Update, reason: str) -> None:
        """The worker refused ``update`` and keeps what it held; tell the trainer why."""

    def close(self) -> None:
        """Release this worker's end."""


@runtime_checkable
class TransportBackend(Protocol):
    """TorchRL's legacy protocol: anything that can carry weights for a model id and tell whether
    its peer is there."""

    def send_weights(self, model_id: str, weights: Any) -> None:
        """Deliver ``weights`` for ``model_id`` (blocking until the peer has them)."""

    def receive_weights(self, timeout: float = 1.0) -> tuple[str, Any] | None:
        """Return ``(model_id, weights)``, or None if nothing arrived within ``timeout`` s."""

    def check_connection(self) -> bool:
        """Whether the peer is still reachable."""
