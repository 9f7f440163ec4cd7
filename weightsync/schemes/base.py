"""The scheme: how one model's weights get from the trainer to its workers.

A scheme composes a :class:`~weightsync.strategy.WeightStrategy` (the format at the API
boundary) with a transport (how bytes move): it resolves the model, builds the transport pair
(a :class:`~weightsync.transports.base.SenderTransport` on the trainer, a
:class:`~weightsync.transports.base.ReceiverTransport` in each worker), hands them to the
endpoints and delegates its lifecycle calls to them. Concrete schemes differ only in the
transports they build; everything else lives here, once.

Lifecycle, as in TorchRL's ``torchrl.weight_update``:

* trainer: ``init_on_sender(model_id, model=..., pipes=[...])`` then ``connect()`` (hands the
  initial weights to every worker and waits for them), then ``send()`` per update;
* worker: ``init_on_receiver(model_id, model=..., pipe=...)`` then ``connect()``, then
  ``receive()`` whenever it may pick up new weights;
* both: ``shutdown()``. A scheme initialised on the trainer pickles to a spawned worker without its
  runtime state (pipes, buffers, the model), which ``init_on_receiver`` rebuilds there.

Two seams let a compatibility layer drive a scheme without the scheme knowing it (TorchRL's
collectors and older calls use them, from :mod:`weightsync.torchrl` and :mod:`weightsync.legacy`):
:meth:`WeightSyncScheme.accept_keywords` adds keywords the init calls take, and a
:class:`SchemeSession` set on :attr:`WeightSyncScheme.session` is told of each lifecycle step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Literal, Protocol

from weightsync.endpoints import WeightReceiver, WeightSender
from weightsync.lifetime import close_at_exit, closed
from weightsync.sources import resolve_model
from weightsync.strategy import DEFAULT_FORMAT, WeightFormat, WeightStrategy
from weightsync.timeouts import check_timeout
from weightsync.transports.base import ReceiverTransport, SenderTransport

Role = Literal["sender", "receiver"]

#: Turns keywords a compatibility layer added into the scheme's own: called as
#: ``adapt(scheme, model_id, context, kwargs)``, returns the keywords left for the scheme.
KeywordAdapter = Callable[["WeightSyncScheme", str, Any, dict[str, Any]], dict[str, Any]]

_RUNTIME = ("_context", "_model", "_sender", "_receiver", "_transport", "_pipes", "_pipe")


class SchemeSession(Protocol):
    """Something that drives a scheme from outside (a TorchRL collector) and must hear of its
    lifecycle. Set as :attr:`WeightSyncScheme.session`, it is pickled with the scheme (to the
    workers) and told:"""

    def endpoint_options(self, scheme: WeightSyncScheme, role: Role) -> dict[str, Any]:
        """Constructor arguments of the scheme's endpoint of ``role`` that it overrides."""

    def initialised(self, scheme: WeightSyncScheme) -> None:
        """``init_on_sender`` or ``init_on_receiver`` has set the scheme up."""

    def connected(self, scheme: WeightSyncScheme) -> None:
        """``connect()`` has returned on this side."""

    def context_changed(self, scheme: WeightSyncScheme) -> None:
        """The scheme's :attr:`~WeightSyncScheme.context` was replaced."""

    def close(self, scheme: WeightSyncScheme) -> None:
        """``shutdown()``: release what the session holds."""


class WeightSyncScheme(ABC):
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
            None: as the :attr:`session` driving the scheme asks (a TorchRL collector: wait),
            else no.
        materialize_meta: let a worker whose model is on the ``meta`` device give it CPU storage
            at the first update (a TorchRL collector sends such models, and asks for it);
            otherwise such an update is refused with an error saying so.
    """

    #: The name ``from_backend`` knows the scheme by (``"pipe"``, ``"shared-mem"``, ...).
    backend_name: ClassVar[str]
    _backends: ClassVar[dict[str, type[WeightSyncScheme]]] = {}
    _aliases: ClassVar[dict[str, str]] = {}
    _adapters: ClassVar[dict[Role, list[tuple[tuple[str, ...], KeywordAdapter]]]] = {
        "sender": [],
        "receiver": [],
    }
    #: The keywords ``init_on_sender`` / ``init_on_receiver`` take (a scheme adds its own).
    #: ``worker_id=`` (the worker's index) is taken by every scheme, so that code written for
    #: any scheme can pass it: the distributed scheme needs it, the others know it from the pipe.
    sender_keywords: ClassVar[tuple[str, ...]] = ("model", "pipes", "num_workers")
    receiver_keywords: ClassVar[tuple[str, ...]] = ("model", "pipe", "worker_id")
    #: Drop keywords no one takes instead of refusing them (the reference API's ``none`` scheme).
    ignores_unknown_keywords: ClassVar[bool] = False

    def __init_subclass__(cls, backend: str | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if backend is not None:
            cls.backend_name = backend
            WeightSyncScheme._backends[backend] = cls

    def __init__(
        self,
        strategy: WeightFormat = DEFAULT_FORMAT,
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
        self.role: Role | None = None  # once initialised
        #: What drives this scheme from outside, if anything (see :class:`SchemeSession`).
        self.session: SchemeSession | None = None
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._context: Any = None
        self._model: Any = None
        self._sender: WeightSender | None = None
        self._receiver: WeightReceiver | None = None
        self._transport: SenderTransport | ReceiverTransport | None = None
        self._pipes: list | None = None
        self._pipe: Any = None
        #: Whether ``connect()`` has returned on this side (TorchRL's ``synchronized_on_*``).
        self.connected = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(strategy={self.strategy.extract_as!r}, "
            f"model_id={self.model_id!r}, role={self.role!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in _RUNTIME:
            state[key] = None
        state.update(role=None, connected=False)
        return state

    # ----------------------------------------------------------------------- extension seams
    @classmethod
    def accept_keywords(cls, role: Role, names: tuple[str, ...], adapt: KeywordAdapter) -> None:
        """Let every scheme's ``init_on_<role>`` take the keywords ``names``: before the scheme
        reads its keywords, ``adapt(scheme, model_id, context, kwargs)`` turns them into its own
        (it runs at every init, given or not). For a compatibility layer (TorchRL's ``ctx=``)."""
        WeightSyncScheme._adapters[role].append((tuple(names), adapt))

    @classmethod
    def add_alias(cls, alias: str, backend: str) -> None:
        """Let ``from_backend(alias)`` build the scheme registered as ``backend``."""
        WeightSyncScheme._aliases[alias] = backend

    @property
    def model(self) -> Any:
        """The model this side sends from or receives into."""
        return self._model

    @model.setter
    def model(self, model: Any) -> None:
        # (TorchRL's worker re-points this at the policy its collector runs.) The endpoint uses
        # the new model from its next update on.
        self._model = model
        for endpoint in (self._sender, self._receiver):
            if endpoint is not None:
                endpoint.model = model

    @property
    def context(self) -> Any:
        """The object model ids resolve on (TorchRL: the collector)."""
        return self._context

    @context.setter
    def context(self, context: Any) -> None:
        self._context = context
        if self.session is not None:
            self.session.context_changed(self)

    # --------------------------------------------------------------------------------- factory
    @classmethod
    def from_backend(cls, name: str, **kwargs: Any) -> WeightSyncScheme:
        """Build a scheme by its backend name: ``"none"``, ``"pipe"``, ``"shared-mem"`` or
        ``"distributed"``, or an alias of one (TorchRL's ``"shared"``, ``"process"``, ...)."""
        try:
            scheme_cls = WeightSyncScheme._backends[WeightSyncScheme._aliases.get(name, name)]
        except KeyError:
            raise ValueError(
                f"unknown weight-sync backend {name!r}; available: "
                f"{sorted(WeightSyncScheme._backends)} (or the aliases "
                f"{sorted(WeightSyncScheme._aliases)})"
            ) from None
        return scheme_cls(**kwargs)

    # -------------------------------------------------------------------------- initialisation
    def init_on_sender(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Set up the trainer side (local only; no communication).

        The model and the pipes come from ``kwargs`` (``model=``, ``pipes=``, ``num_workers=``)
        or from ``context`` (``context.get_model(model_id)`` or the path ``model_id`` on it,
        ``context.pipes``, ``context.num_workers``). An unknown keyword is a TypeError naming
        the accepted ones.
        """
        kwargs = self._own_keywords("sender", model_id, context, kwargs)
        self.model_id = model_id
        self._context = context
        self._model = self._find_model(model_id, context, kwargs.get("model"))
        self._pipes = kwargs.get("pipes", getattr(context, "pipes", None))
        self._transport = self._build_sender_transport(
            self._pipes, kwargs.get("num_workers", getattr(context, "num_workers", None))
        )
        close_at_exit(self._transport)  # workers exit even if shutdown() is never called
        self._sender = WeightSender(**self.endpoint_options("sender"))
        self.role = "sender"
        if self.session is not None:
            self.session.initialised(self)

    def init_on_receiver(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Set up one worker's side (local only): its model (``model=``, or resolved on
        ``context``) and pipe (``pipe=`` or ``context.pipe``). An unknown keyword is a
        TypeError naming the accepted ones."""
        kwargs = self._own_keywords("receiver", model_id, context, kwargs)
        self.model_id = model_id
        self._context = context
        self._model = self._find_model(model_id, context, kwargs.get("model"))
        self._pipe = kwargs.get("pipe", getattr(context, "pipe", None))
        self._transport = self._build_receiver_transport(self._pipe)
        self._receiver = WeightReceiver(**self.endpoint_options("receiver"))
        self.role = "receiver"
        if self.session is not None:
            self.session.initialised(self)

    def _own_keywords(
        self, role: Role, model_id: str, context: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """``kwargs`` once the added keywords are adapted; TypeError for one nobody takes."""
        accepted = list(self.sender_keywords if role == "sender" else self.receiver_keywords)
        for names, adapt in WeightSyncScheme._adapters[role]:
            kwargs = adapt(self, model_id, context, dict(kwargs))
            accepted += names
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown and self.ignores_unknown_keywords:
            return {k: v for k, v in kwargs.items() if k not in unknown}
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.init_on_{role}() got unexpected keyword(s) {unknown}; "
                f"it accepts {sorted(set(accepted))} (and context=)"
            )
        return kwargs

    def _find_model(self, model_id: str, context: Any, model: Any) -> Any:
        """``model``, else the model ``model_id`` names on ``context`` (None without one)."""
        if model is None and context is not None:
            return resolve_model(context, model_id)
        return model

    @abstractmethod
    def _build_sender_transport(
        self, pipes: list | None, num_workers: int | None
    ) -> SenderTransport:
        """The trainer-side transport."""

    @abstractmethod
    def _build_receiver_transport(self, pipe: Any) -> ReceiverTransport:
        """The worker-side transport."""

    def endpoint_options(self, role: Role) -> dict[str, Any]:
        """The constructor arguments of this scheme's ``"sender"`` or ``"receiver"`` (what
        ``WeightSender(scheme)``, the reference API's form, is built from)."""
        if self._transport is None:
            call = "init_on_sender()" if role == "sender" else "init_on_worker()"
            raise RuntimeError(f"{type(self).__name__} has no transport yet: call {call} first")
        options: dict[str, Any] = {
            "model_id": self.model_id,
            "transport": self._transport,
            "model": self._model,
            "strategy": self.strategy,
        }
        if role == "sender":
            options.update(
                context=self._context,
                reject_non_finite=self.reject_non_finite,
                bind_source=self.bind_source,
                adoption_timeout=self.timeout if self.sync else None,
            )
        else:
            options.update(materialize_meta=self.materialize_meta)
        if self.session is not None:
            options.update(self.session.endpoint_options(self, role))
        return options

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
        self.connected = True
        if self.session is not None:
            self.session.connected(self)

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
        if self.session is not None:
            self.session.close(self)
            self.session = None
        if self._transport is not None:
            self._transport.close()
            closed(self._transport)
        self._reset_runtime()
        self.role = None
