"""The scheme: how one model's weights get from the trainer to its workers.

A scheme composes a :class:`~weightsync.strategy.WeightStrategy` (the format at the API
boundary) with a transport (how bytes move): it resolves the model, builds the transport pair
(a :class:`~weightsync.transports.base.SenderTransport` on the trainer, a
:class:`~weightsync.transports.base.ReceiverTransport` in each worker), hands them to the
endpoints and delegates its lifecycle calls to them. Concrete schemes differ only in the
transports they build; everything else lives here, once. TorchRL's legacy calls come from
:class:`~weightsync.legacy.LegacySchemeAPI`, what TorchRL's collectors call from
:class:`~weightsync.torchrl.TorchRLSchemeMixin`.

Lifecycle, as in TorchRL's ``torchrl.weight_update``:

* trainer: ``init_on_sender(model_id, model=..., pipes=[...])`` then ``connect()`` (hands the
  initial weights to every worker and waits for them), then ``send()`` per update;
* worker: ``init_on_receiver(model_id, model=..., pipe=...)`` (alias ``init_on_worker``) then
  ``connect()``, then ``receive()`` whenever it may pick up new weights;
* both: ``shutdown()``. A scheme initialised on the trainer pickles to a spawned worker without its
  runtime state (pipes, buffers, the model), which ``init_on_receiver`` rebuilds there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from weightsync.endpoints import WeightReceiver, WeightSender
from weightsync.legacy import LegacySchemeAPI
from weightsync.lifetime import close_at_exit, closed
from weightsync.sources import resolve_model
from weightsync.strategy import WeightFormat, WeightStrategy
from weightsync.timeouts import check_timeout
from weightsync.torchrl import TorchRLSchemeMixin, canonical_backend
from weightsync.transports.base import ReceiverTransport, SenderTransport

_RUNTIME = (
    "_context", "_model", "_sender", "_receiver", "_transport", "_pipes", "_pipe",
    "_legacy_link", "_synchronized", "_receiving",
)  # fmt: skip


class WeightSyncScheme(LegacySchemeAPI, TorchRLSchemeMixin, ABC):
    """Base class of every scheme; ``WeightSyncScheme.from_backend(name)`` builds one by name.

    Args:
        strategy: the weight format at the API boundary, ``"state_dict"`` or ``"tensordict"``.
        timeout: seconds any blocking call waits for a peer before raising an error that names it.
        reject_non_finite: refuse (raise in ``send``) weights holding NaN or inf.
        bind_source: let the sender keep the trainer model's tensors in one flat buffer (same
            ``nn.Parameter`` objects, new storage), so a send copies one block instead of one
            tensor at a time. Only CPU models are bound; a model moved later is copied per tensor.
        sync: whether ``send`` also waits until every worker holds the new version (TorchRL's
            ``sync``; it matters for shared-mem, whose send otherwise returns once published).
            None: only when a TorchRL collector drives the scheme.
        materialize_meta: let a worker whose model is on the ``meta`` device give it CPU storage
            at the first update (set by a TorchRL collector, which sends such models); otherwise
            such an update is refused with an error saying so.
    """

    backend: ClassVar[str]
    _backends: ClassVar[dict[str, type[WeightSyncScheme]]] = {}

    def __init_subclass__(cls, backend: str | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if backend is not None:
            cls.backend = backend
            WeightSyncScheme._backends[backend] = cls

    def __init__(
        self,
        strategy: WeightFormat = "state_dict",
        *,
        timeout: float = 10.0,
        reject_non_finite: bool = False,
        bind_source: bool = True,
        sync: bool | None = None,
        materialize_meta: bool = False,
    ):
        self.strategy = WeightStrategy(strategy)
        self.sync = sync
        self.materialize_meta = materialize_meta
        self.timeout = check_timeout(timeout)
        self.reject_non_finite = reject_non_finite
        self.bind_source = bind_source
        self.model_id: str | None = None
        self.role: str | None = None  # "sender" or "receiver" once initialised
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._context: Any = None
        self._model: Any = None
        self._sender: WeightSender | None = None
        self._receiver: WeightReceiver | None = None
        self._transport: SenderTransport | ReceiverTransport | None = None
        self._pipes: list | None = None
        self._pipe: Any = None
        self._legacy_link: Any = None  # the transport of the legacy create_transport(), if any
        self._synchronized = False  # connect() done (TorchRL's synchronized_on_* properties)
        self._receiving: Any = None  # a collector worker's receiving thread and its lock

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(strategy={self.strategy.extract_as!r}, "
            f"model_id={self.model_id!r}, role={self.role!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in _RUNTIME:
            state[key] = None
        state["role"] = None
        return state

    # --------------------------------------------------------------------------------- factory
    @classmethod
    def from_backend(cls, name: str, **kwargs: Any) -> WeightSyncScheme:
        """Build a scheme by its backend name: ``"none"``, ``"pipe"``, ``"shared-mem"`` or
        ``"distributed"``; TorchRL's names (``"shared"``, ``"process"``, ...) are accepted too."""
        try:
            scheme_cls = WeightSyncScheme._backends[canonical_backend(name)]
        except KeyError:
            raise ValueError(
                f"unknown weight-sync backend {name!r}; available: "
                f"{sorted(WeightSyncScheme._backends)} (or TorchRL's aliases of them)"
            ) from None
        return scheme_cls(**kwargs)

    # -------------------------------------------------------------------------- initialisation
    def init_on_sender(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Set up the trainer side (local only; no communication).

        The model and the pipes come from ``kwargs`` (``model=``, ``pipes=``, ``num_workers=``)
        or from ``context`` (``context.get_model(model_id)`` or the path ``model_id`` on it,
        ``context.pipes``, ``context.num_workers``). ``processes=`` (or ``context.processes``),
        the workers' processes by worker index, lets every wait name a worker whose process
        died at once, with its exit code, even before it connected. TorchRL's collectors pass
        ``ctx=`` (see :mod:`weightsync.torchrl`).
        """
        kwargs = self._torchrl_sender_kwargs(model_id, context, kwargs)
        self.model_id = model_id
        self._context = context
        self._model = kwargs.get("model")
        if self._model is None and context is not None:
            self._model = resolve_model(context, model_id)
        self._pipes = kwargs.get("pipes", getattr(context, "pipes", None))
        self._transport = self._build_sender_transport(
            self._pipes, kwargs.get("num_workers", getattr(context, "num_workers", None))
        )
        self._transport.watch_processes(
            kwargs.get("processes", getattr(context, "processes", None))
        )
        close_at_exit(self._transport)  # workers exit even if shutdown() is never called
        self._sender = self._new_sender()
        self.role = "sender"

    def init_on_receiver(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Set up one worker's side (local only): its model (``model=``) and pipe (``pipe=``);
        TorchRL's collectors pass ``worker_idx=`` and no pipe (see :mod:`weightsync.torchrl`)."""
        kwargs = self._torchrl_receiver_kwargs(context, kwargs)
        self.model_id = model_id
        self._context = context
        self._model = kwargs.get("model")
        if self._model is None and context is not None:
            self._model = resolve_model(context, model_id)
        self._pipe = kwargs.get("pipe", getattr(context, "pipe", None))
        self._transport = self._build_receiver_transport(self._pipe)
        self._receiver = self._new_receiver()
        self.role = "receiver"

    @abstractmethod
    def _build_sender_transport(
        self, pipes: list | None, num_workers: int | None
    ) -> SenderTransport:
        """The trainer-side transport."""

    @abstractmethod
    def _build_receiver_transport(self, pipe: Any) -> ReceiverTransport:
        """The worker-side transport."""

    @abstractmethod
    def _legacy_transport(self, pipe: Any) -> Any:
        """The message-level transport of TorchRL's ``create_transport(pipe)``."""

    def endpoint_options(self, role: str) -> dict[str, Any]:
        """The constructor arguments of this scheme's ``"sender"`` or ``"receiver"`` (what
        ``WeightSender(scheme)``, TorchRL's legacy form, is built from)."""
        if self._transport is None:
            call = "init_on_sender()" if role == "sender" else "init_on_worker()"
            raise RuntimeError(f"{type(self).__name__} has no transport yet: call {call} first")
        common = {"model": self._model, "strategy": self.strategy}
        common.update(self._torchrl_endpoint_options(role))
        if role == "receiver":
            return {
                "model_id": self.model_id,
                "transport": self._transport,
                "legacy_link": self._legacy_link,
                **common,
            }
        return {
            "model_id": self.model_id,
            "transport": self._transport,
            "context": self._context,
            "reject_non_finite": self.reject_non_finite,
            "bind_source": self.bind_source,
            **common,
        }

    def _new_sender(self) -> WeightSender:
        return WeightSender(**self.endpoint_options("sender"))

    def _new_receiver(self) -> WeightReceiver:
        return WeightReceiver(**self.endpoint_options("receiver"))

    # ------------------------------------------------------------------------------ endpoints
    def get_sender(self) -> WeightSender:
        if self._sender is None:
            raise RuntimeError(
                f"{type(self).__name__} has no sender: call init_on_sender() first (on the trainer)"
            )
        return self._sender

    def get_receiver(self) -> WeightReceiver:
        if self._receiver is None:
            raise RuntimeError(
                f"{type(self).__name__} has no receiver: call init_on_worker() (or "
                "init_on_receiver()) first (in the worker)"
            )
        return self._receiver

    # ----------------------------------------------------------------------- newer lifecycle
    def connect(
        self, timeout: float | None = None, *, worker_idx: int | None = None, weights: Any = None
    ) -> None:
        """Blocking rendez-vous. Trainer: send the initial weights (``weights``, default the
        model's) to every worker and wait up to ``timeout`` (default the scheme's) for each to
        adopt them; shared-mem's one-time hand-out of its buffers waits up to the scheme's timeout
        per worker. Worker: wait for the initial weights (SyncTimeoutError naming the model if
        they do not come within ``timeout``). ``worker_idx`` is TorchRL's worker-side argument,
        accepted (the worker's index was given to ``init_on_receiver``)."""
        if self.role is None:
            raise RuntimeError(
                f"{type(self).__name__} is not initialised: call init_on_sender() (trainer) or "
                "init_on_receiver() / init_on_worker() (worker) before connect()"
            )
        if timeout is not None:
            check_timeout(timeout)
        if self.role == "sender":
            self.get_sender().connect(timeout, weights)
        else:
            self.get_receiver().connect(self.timeout if timeout is None else timeout)
        self._torchrl_after_connect()

    def send(self, weights: Any = None, worker_ids: int | list[int] | None = None) -> None:
        """Send new weights to the workers (blocking); see :meth:`WeightSender.send`."""
        self.get_sender().send(weights, worker_ids)

    def send_async(self, weights: Any = None, worker_ids: int | list[int] | None = None) -> None:
        self.get_sender().send_async(weights, worker_ids)

    def wait_async(self, timeout: float | None = None) -> None:
        self.get_sender().wait_async(timeout)

    def receive(self, timeout: float | None = None) -> bool:
        """Worker: apply new weights if any arrive within ``timeout`` s; True when applied."""
        return self.get_receiver().receive(0.001 if timeout is None else timeout)

    def reading(self) -> AbstractContextManager:
        """Worker: ``with scheme.reading():`` keeps updates out of the model while the block
        uses it from a thread other than the one calling receive() (see
        :meth:`WeightReceiver.reading`)."""
        return self.get_receiver().reading()

    @property
    def closed(self) -> bool:
        """True on a worker once the trainer has shut the scheme down."""
        return self._receiver is not None and self._receiver.closed

    def shutdown(self) -> None:
        """Release pipes, buffers and threads; the scheme can be initialised again after."""
        self._torchrl_shutdown()
        if self._transport is not None:
            self._transport.close()
            closed(self._transport)
        self._reset_runtime()
        self.role = None
