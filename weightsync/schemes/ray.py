"""``ray``: weights through Ray's object store, workers as Ray actors on any node."""

from __future__ import annotations

import uuid
from typing import Any

from weightsync.schemes.base import WeightSyncScheme
from weightsync.strategy import DEFAULT_FORMAT, WeightFormat
from weightsync.transports.ray import RayReceiver, RaySender


class RayWeightSyncScheme(WeightSyncScheme, backend="ray"):
    """Send weights to Ray actors through Ray's object store.

    Each version is put in the object store once; Ray pulls it to each node that has workers
    once, and the workers there read it from the node's shared memory without a copy (their
    parameters become views of the object, read-only like every weightsync snapshot). A send
    returns when every chosen worker holds the version complete (it adopts it at its next
    ``receive()``; a busy worker does not hold the trainer up). A worker that refused a version
    is named by the next send (``WorkerRejectedError``); a dead actor is named as dead
    (``PeerDiedError``), a silent one after ``timeout`` (``SyncTimeoutError``).

    Ray must be initialised (``ray.init()``) in the trainer before ``init_on_sender``. The
    actors may get the scheme before or after ``init_on_sender``: a worker finds the trainer's
    board by its name (unique to the scheme) once the trainer has created it.

    Args:
        strategy: the weight format at the API boundary.
        num_workers: how many workers, when ``init_on_sender`` is given no ``actors``.
        worker_id: this worker's index (or pass ``worker_id=`` to ``init_on_receiver``).
        **kwargs: ``timeout``, ``reject_non_finite``, ``bind_source`` (see WeightSyncScheme).

    Example::

        @ray.remote
        class Worker:
            def __init__(self):
                self.policy = torch.nn.Linear(4, 2)
            def join(self, scheme, worker_id):
                self.scheme = scheme
                scheme.init_on_receiver("policy", model=self.policy, worker_id=worker_id)
                scheme.connect()
            def act(self):
                self.scheme.receive()              # adopts the newest version, if any
                ...

        actors = [Worker.remote() for _ in range(2)]
        scheme = RayWeightSyncScheme()
        scheme.init_on_sender("policy", model=policy, actors=actors)
        joined = [a.join.remote(scheme, i) for i, a in enumerate(actors)]
        scheme.connect()                           # every actor holds the initial weights
        ray.get(joined)
        scheme.send()                              # after each optimizer step
    """

    sender_keywords = (*WeightSyncScheme.sender_keywords, "actors")

    def __init__(
        self,
        strategy: WeightFormat = DEFAULT_FORMAT,
        *,
        num_workers: int | None = None,
        worker_id: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(strategy, **kwargs)
        self.num_workers = num_workers
        self.worker_id = worker_id
        self.board: Any = None  # the trainer's Ray actor that workers take versions from
        #: The board's Ray actor name: a worker given the scheme before ``init_on_sender`` (a
        #: framework hands it over with the actor) finds the board by it.
        self.board_name = f"weightsync-ray-board-{uuid.uuid4().hex}"
        self._actors: list | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_actors"] = None  # the workers do not need each other's handles
        return state

    def init_on_sender(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Trainer set-up: ``model=`` and ``actors=`` (the workers' Ray actor handles, in worker
        order: errors then name their actors and see them die) or ``num_workers=``."""
        self._actors = kwargs.pop("actors", None)
        if self._actors is not None:
            kwargs.setdefault("num_workers", len(self._actors))
        super().init_on_sender(model_id, context, **kwargs)

    def init_on_receiver(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Worker set-up, inside a Ray actor: ``model=`` and ``worker_id=``."""
        self.worker_id = kwargs.pop("worker_id", getattr(context, "worker_id", self.worker_id))
        super().init_on_receiver(model_id, context, **kwargs)

    def _build_sender_transport(self, pipes: list | None, num_workers: int | None) -> RaySender:
        num_workers = num_workers or self.num_workers
        if not num_workers:
            raise ValueError(
                "the ray scheme needs its workers: init_on_sender(model_id, model=..., "
                "actors=[...]) or num_workers=N"
            )
        transport = RaySender(num_workers, self.timeout, actors=self._actors,
                              board_name=self.board_name)  # fmt: skip
        self.num_workers, self.board = num_workers, transport.board
        return transport

    def _build_receiver_transport(self, pipe: Any) -> RayReceiver:
        known = self.num_workers is not None
        if (
            self.worker_id is None
            or self.worker_id < 0
            or (known and self.worker_id >= self.num_workers)
        ):
            bound = f" < {self.num_workers}" if known else ""
            raise ValueError(
                "the ray scheme needs this worker's index: init_on_receiver(model_id, "
                f"model=..., worker_id=i) with 0 <= i{bound}, got worker_id={self.worker_id}"
            )
        board = self.board if self.board is not None else self.board_name
        return RayReceiver(board, self.worker_id, self.model_id, self.timeout)
