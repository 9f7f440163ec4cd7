"""TorchRL's legacy calls, in one place: readable, testable, and one day deletable on their own.

``torchrl.weight_update`` grew a newer lifecycle (``init_on_receiver``, ``connect``, ``send``,
``receive``, ``shutdown``); its older entry points still appear in user code and in
``shared/reference/API.md``. This module adds them to the core's classes (see
:func:`weightsync.extend.add_calls`), each a thin alias of the real path through the core's
public surface: a scheme's ``init_on_worker``, ``prepare_weights``, ``create_transport``,
``create_sender`` and ``create_receiver``, and a sender's ``update_weights``. No scheme writes
legacy code: ``create_transport`` hands out the message-level transport TorchRL's scheme of the
same kind would (:data:`LEGACY_TRANSPORTS`; by default an :class:`~weightsync.MPTransport` over
the pipe).

A worker written to the legacy API takes weights from such a transport's ``receive_weights`` (or
from any ``MPTransport`` over its pipe) and applies them with ``WeightReceiver.apply_weights``:
a worker set up with ``init_on_worker``, ``create_transport`` or ``create_receiver`` then
acknowledges them on its pipe, so the trainer's ``send_weights`` returns.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from weightsync.endpoints import WeightReceiver, WeightSender
from weightsync.extend import add_calls
from weightsync.schemes import NoWeightSyncScheme, SharedMemWeightSyncScheme, WeightSyncScheme
from weightsync.sources import prepare_weights
from weightsync.strategy import Weights, WeightStrategy
from weightsync.transports import (
    MPTransport,
    NullReceiver,
    NullSender,
    NullTransport,
    SharedMemTransport,
)


def _shared_mem_transport(scheme: SharedMemWeightSyncScheme, pipe: Any) -> SharedMemTransport:
    transport = SharedMemTransport(
        scheme.weights_by_model,
        scheme.auto_register,
        num_buffers=scheme.num_buffers,
        timeout=scheme.timeout,
    )
    if pipe is not None:
        transport.register_pipe(pipe)
    return transport


#: ``create_transport(pipe)`` per scheme class (the nearest base listed wins); any other scheme
#: gets an ``MPTransport`` over the pipe.
LEGACY_TRANSPORTS: dict[type, Callable[[Any, Any], Any]] = {
    NoWeightSyncScheme: lambda scheme, pipe: NullTransport(),
    SharedMemWeightSyncScheme: _shared_mem_transport,
}


def _default_transport(scheme: WeightSyncScheme, pipe: Any) -> MPTransport:
    if pipe is None:
        raise ValueError(
            f"{type(scheme).__name__}.create_transport() needs a pipe (or a context with a "
            ".pipe) for its message-level transport"
        )
    return MPTransport(pipe, scheme.timeout)


def _acknowledge_on(receiver: WeightReceiver, pipe: Any) -> None:
    """Let ``receiver.apply_weights`` acknowledge weights a legacy worker took from ``pipe``."""
    if pipe is None or not hasattr(pipe, "send"):
        return
    receiver.after_apply_weights.append(MPTransport(pipe).acknowledge_pending)


@add_calls(WeightSender)
class LegacySenderCalls:
    """A sender's legacy calls."""

    def update_weights(self, weights: Any) -> None:
        """Legacy: send ``weights`` to all workers (blocking)."""
        self.send(weights)


@add_calls(WeightSyncScheme)
class LegacySchemeCalls:
    """A scheme's legacy calls, through its public surface."""

    def init_on_worker(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Legacy name of ``init_on_receiver``; the worker acknowledges on its pipe what it
        applies with ``get_receiver().apply_weights``."""
        self.init_on_receiver(model_id, context, **kwargs)
        _acknowledge_on(self.get_receiver(), kwargs.get("pipe", getattr(context, "pipe", None)))

    def prepare_weights(
        self, weights: Any, model_id: str, strategy: WeightStrategy, context: Any = None
    ) -> Weights | None:
        """Legacy: turn what a caller passed to ``send`` into weights ready to send (see
        :func:`weightsync.sources.prepare_weights`; without a context, the scheme's model)."""
        return prepare_weights(weights, model_id, strategy, context, self.model)

    def create_transport(self, pipe_or_context: Any) -> Any:
        """Legacy factory: the message-level transport this scheme uses over a pipe (or a
        context's ``.pipe``); see :data:`LEGACY_TRANSPORTS`."""
        pipe = getattr(pipe_or_context, "pipe", pipe_or_context)
        build = next(
            (LEGACY_TRANSPORTS[c] for c in type(self).__mro__ if c in LEGACY_TRANSPORTS),
            _default_transport,
        )
        transport = build(self, pipe)
        if isinstance(transport, MPTransport):
            _LEGACY_PIPES[self] = transport.pipe
            if self.role == "receiver":
                _acknowledge_on(self.get_receiver(), transport.pipe)
        return transport

    def create_sender(self) -> WeightSender:
        """Legacy factory: this scheme's sender (after ``init_on_sender``; a ``none`` scheme not
        yet initialised gets one that moves nothing, as TorchRL's does)."""
        if isinstance(self, NoWeightSyncScheme) and self.role is None:
            return WeightSender(self.model_id, NullSender(), strategy=self.strategy)
        return self.get_sender()

    def create_receiver(self) -> WeightReceiver:
        """Legacy factory: this scheme's receiver (after ``init_on_worker``; a ``none`` scheme
        not yet initialised gets one on which nothing arrives)."""
        if isinstance(self, NoWeightSyncScheme) and self.role is None:
            return WeightReceiver(self.model_id, NullReceiver(), strategy=self.strategy)
        receiver = self.get_receiver()
        _acknowledge_on(receiver, _LEGACY_PIPES.get(self))
        return receiver


#: The pipe of each scheme's legacy ``create_transport``, for a receiver created after it.
_LEGACY_PIPES: weakref.WeakKeyDictionary[WeightSyncScheme, Any] = weakref.WeakKeyDictionary()
