"""``sync=none``: synchronisation switched off."""

from __future__ import annotations

from typing import Any

from weightsync.schemes.base import WeightSyncScheme
from weightsync.transports.null import NullReceiver, NullSender


class NoWeightSyncScheme(WeightSyncScheme, backend="none"):
    """No-op scheme: workers keep the weights they started with.

    ``create_transport`` returns None, the init calls accept and ignore their arguments (beyond
    remembering the model id), and a send moves no bytes. Useful as the control arm of an
    experiment: it shows what acting on stale weights costs.

    Example:
        >>> scheme = NoWeightSyncScheme()
        >>> scheme.init_on_sender("policy")
        >>> scheme.send()  # returns at once; nothing moves
    """

    def init_on_sender(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Remember ``model_id``; ``context`` and ``kwargs`` are accepted and ignored, except
        ``pipes=``, used only to tell the workers when :meth:`shutdown` is called."""
        super().init_on_sender(model_id, pipes=kwargs.get("pipes"))

    def init_on_receiver(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Remember ``model_id``; ``context`` and ``kwargs`` are accepted and ignored, except
        ``pipe=``, on which :attr:`closed` notices the trainer's :meth:`shutdown`."""
        super().init_on_receiver(model_id, pipe=kwargs.get("pipe"))

    def endpoint_options(self, role: str) -> dict[str, Any]:
        """As for every scheme; before any init (TorchRL's legacy ``create_sender()``), the
        endpoints get transports of their own, since there is nothing to set up."""
        if self._transport is None:
            transport = NullSender() if role == "sender" else NullReceiver()
            return {"model_id": self.model_id, "transport": transport, "strategy": self.strategy}
        return super().endpoint_options(role)

    def _build_sender_transport(self, pipes: list | None, num_workers: int | None) -> NullSender:
        return NullSender(pipes)

    def _build_receiver_transport(self, pipe: Any) -> NullReceiver:
        return NullReceiver(pipe)

    def _legacy_transport(self, pipe: Any) -> None:
        return None
