"""The scheme: how one model's weights get from the trainer to its workers.

A scheme composes a :class:`~weightsync.strategy.WeightStrategy` (the format at the API
boundary) with a transport (how bytes move), and hands out the endpoints that use them. Concrete
schemes differ only in the transport they build; everything else lives here, once.

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
from typing import Any, ClassVar

from tensordict import TensorDictBase
from torch import nn

from weightsync.endpoints import WeightReceiver, WeightSender
from weightsync.errors import SyncTimeoutError, WeightMismatchError
from weightsync.paths import resolve_model_id
from weightsync.strategy import WeightFormat, WeightStrategy

_RUNTIME = ("_context", "_model", "_sender", "_receiver", "_transport", "_pipes", "_pipe")


class WeightSyncScheme(ABC):
    """Base class of every scheme; ``WeightSyncScheme.from_backend(name)`` builds one by name.

    Args:
        strategy: the weight format at the API boundary, ``"state_dict"`` or ``"tensordict"``.
        timeout: seconds any blocking call waits for a peer before raising an error that names it.
        reject_non_finite: refuse (raise in ``send``) weights holding NaN or inf.
        bind_source: let the sender keep the trainer model's tensors in one flat buffer (same
            ``nn.Parameter`` objects, new storage), so a send copies one block instead of one
            tensor at a time. Only CPU models are bound; a model moved later is copied per tensor.
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
    ):
        self.strategy = WeightStrategy(strategy)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = timeout
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
        self._transport: Any = None
        self._pipes: list | None = None
        self._pipe: Any = None

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
        """Build a scheme by its backend name: ``"none"``, ``"pipe"`` or ``"shared-mem"``."""
        try:
            scheme_cls = WeightSyncScheme._backends[name]
        except KeyError:
            raise ValueError(
                f"unknown weight-sync backend {name!r}; available: "
                f"{sorted(WeightSyncScheme._backends)}"
            ) from None
        return scheme_cls(**kwargs)

    # -------------------------------------------------------------------------- initialisation
    def init_on_sender(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Set up the trainer side (local only; no communication).

        The model and the pipes come from ``kwargs`` (``model=``, ``pipes=``, ``num_workers=``)
        or from ``context`` (``context.get_model(model_id)`` or the path ``model_id`` on it,
        ``context.pipes``, ``context.num_workers``).
        """
        self.model_id = model_id
        self._context = context
        self._model = kwargs.get("model")
        if self._model is None and context is not None:
            self._model = self._resolve_model(context, model_id)
        self._pipes = kwargs.get("pipes", getattr(context, "pipes", None))
        self._transport = self._build_sender_transport(
            self._pipes, kwargs.get("num_workers", getattr(context, "num_workers", None))
        )
        self._sender = WeightSender(self)
        self.role = "sender"

    def init_on_receiver(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Set up one worker's side (local only): its model (``model=``) and pipe (``pipe=``)."""
        self.model_id = model_id
        self._context = context
        self._model = kwargs.get("model")
        if self._model is None and context is not None:
            self._model = self._resolve_model(context, model_id)
        self._pipe = kwargs.get("pipe", getattr(context, "pipe", None))
        self._transport = self._build_receiver_transport(self._pipe)
        self._receiver = WeightReceiver(self)
        self.role = "receiver"

    def init_on_worker(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Legacy name of :meth:`init_on_receiver`."""
        self.init_on_receiver(model_id, context, **kwargs)

    @staticmethod
    def _resolve_model(context: Any, model_id: str) -> Any:
        get_model = getattr(context, "get_model", None)
        if callable(get_model):
            return get_model(model_id)
        return resolve_model_id(context, model_id)

    @abstractmethod
    def _build_sender_transport(self, pipes: list | None, num_workers: int | None) -> Any:
        """The trainer-side transport (None: nothing moves)."""

    @abstractmethod
    def _build_receiver_transport(self, pipe: Any) -> Any:
        """The worker-side transport (None: nothing arrives)."""

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

    def create_sender(self) -> WeightSender:
        """Legacy factory: a sender bound to this scheme."""
        self._sender = WeightSender(self)
        return self._sender

    def create_receiver(self) -> WeightReceiver:
        """Legacy factory: a receiver bound to this scheme."""
        self._receiver = WeightReceiver(self)
        return self._receiver

    @abstractmethod
    def create_transport(self, pipe_or_context: Any) -> Any:
        """Legacy factory: the transport this scheme uses over ``pipe_or_context``."""

    def prepare_weights(
        self, weights: Any, model_id: str, strategy: WeightStrategy, context: Any = None
    ) -> Any:
        """Turn what a caller passed to ``send`` into weights ready to send.

        ``None``: the model ``model_id`` resolved on ``context``, extracted (None without a
        context); an ``nn.Module``: extracted; a ``str``: a model path on ``context``;
        a TensorDict or a dict: as it is.
        """
        if weights is None:
            if context is None:
                return self._model and strategy.extract_weights(self._model)
            return strategy.extract_weights(self._resolve_model(context, model_id))
        if isinstance(weights, nn.Module):
            return strategy.extract_weights(weights)
        if isinstance(weights, str):
            if context is None:
                raise ValueError(
                    f"weights={weights!r} is a model path, which needs a context to resolve on; "
                    "pass the context to init_on_sender() or send the weights themselves"
                )
            target = resolve_model_id(context, weights)
            return strategy.extract_weights(target) if isinstance(target, nn.Module) else target
        if isinstance(weights, (TensorDictBase, dict)):
            return weights
        raise ValueError(
            f"cannot send weights of type {type(weights).__name__}; pass None, an nn.Module, a "
            "TensorDict, a state_dict or a model path string"
        )

    # ----------------------------------------------------------------------- newer lifecycle
    def connect(self, timeout: float | None = None) -> None:
        """Blocking rendez-vous. Trainer: send the initial weights to every worker and wait up to
        ``timeout`` (default the scheme's) for each to adopt them; shared-mem's one-time hand-out
        of its buffers waits up to the scheme's timeout per worker. Worker: wait for the initial
        weights (SyncTimeoutError naming the model if they do not come within ``timeout``)."""
        if self.role is None:
            raise RuntimeError(
                f"{type(self).__name__} is not initialised: call init_on_sender() (trainer) or "
                "init_on_receiver() / init_on_worker() (worker) before connect()"
            )
        if self.role == "sender":
            self.send_async()
            self.wait_async(timeout)
            return
        receiver = self.get_receiver()
        if self._transport is None:
            return
        timeout = self.timeout if timeout is None else timeout
        if not receiver.receive(timeout):
            if receiver.refused is not None:  # they came, but do not fit this worker's model
                raise WeightMismatchError(self.model_id, receiver.refused)
            raise SyncTimeoutError(
                f"no initial weights for model {self.model_id!r} arrived from the trainer within "
                f"{timeout:g} s; did the trainer call connect() (or send())?"
            )

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

    @property
    def closed(self) -> bool:
        """True on a worker once the trainer has shut the scheme down."""
        return bool(getattr(self._transport, "closed", False))

    def shutdown(self) -> None:
        """Release pipes, buffers and threads; the scheme can be initialised again after."""
        if self._transport is not None:
            self._transport.close()
        self._reset_runtime()
        self.role = None
