"""TorchRL's legacy calls, in one place: readable, testable, and one day deletable on their own.

``torchrl.weight_update`` grew a newer lifecycle (``init_on_receiver``, ``connect``, ``send``,
``receive``, ``shutdown``); its older entry points still appear in user code and in
``shared/reference/API.md``. They live here as mixins of the real classes, each a thin alias of
the real path: a scheme's ``init_on_worker``, ``create_transport``, ``create_sender``,
``create_receiver`` and ``prepare_weights``, and a sender's ``update_weights``. (A receiver's
``apply_weights`` is its real apply path, so it lives on :class:`~weightsync.WeightReceiver`; it
acknowledges weights a legacy worker took from ``create_transport``'s transport, which
``create_transport`` hands it as its ``legacy_link``.)
The transports' message-level calls (``MPTransport.send_weights`` and friends,
``SharedMemTransport.register_weights``) are TorchRL's transport classes themselves.
"""

from __future__ import annotations

from typing import Any

from weightsync.sources import prepare_weights
from weightsync.strategy import Weights, WeightStrategy


class LegacySenderAPI:
    """A sender's legacy calls."""

    def update_weights(self, weights: Any) -> None:
        """Legacy: send ``weights`` to all workers (blocking)."""
        self.send(weights)


class LegacySchemeAPI:
    """A scheme's legacy calls; the scheme provides ``init_on_receiver``, ``_new_sender``,
    ``_new_receiver`` and ``_legacy_transport``."""

    def init_on_worker(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Legacy name of ``init_on_receiver``."""
        self.init_on_receiver(model_id, context, **kwargs)

    def prepare_weights(
        self, weights: Any, model_id: str, strategy: WeightStrategy, context: Any = None
    ) -> Weights | None:
        """Legacy: turn what a caller passed to ``send`` into weights ready to send (see
        :func:`weightsync.sources.prepare_weights`; without a context, the scheme's model)."""
        return prepare_weights(weights, model_id, strategy, context, self._model)

    def create_transport(self, pipe_or_context: Any) -> Any:
        """Legacy factory: the message-level transport this scheme uses over a pipe (or a
        context's ``.pipe``). The scheme's receiver acknowledges on it what a legacy worker
        received from it and applied with ``apply_weights``."""
        self._legacy_link = self._legacy_transport(
            getattr(pipe_or_context, "pipe", pipe_or_context)
        )
        if self._receiver is not None:
            self._receiver.legacy_link = self._legacy_link
        return self._legacy_link

    def create_sender(self) -> Any:
        """Legacy factory: a sender for this scheme (after ``init_on_sender``)."""
        self._sender = self._new_sender()
        return self._sender

    def create_receiver(self) -> Any:
        """Legacy factory: a receiver for this scheme (after ``init_on_worker``)."""
        self._receiver = self._new_receiver()
        return self._receiver
