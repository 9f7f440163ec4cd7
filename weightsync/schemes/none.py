"""``sync=none``: synchronisation switched off."""

from __future__ import annotations

from typing import Any

from weightsync.schemes.base import WeightSyncScheme
from weightsync.transports.null import NullReceiver, NullSender, NullTransport


class NoWeightSyncScheme(WeightSyncScheme, backend="none"):
    """No-op scheme: workers keep the weights they started with.

    ``create_transport`` returns a transport that moves nothing (as TorchRL's), the init calls
    accept and ignore their arguments (beyond remembering the model id), and a send moves no
    bytes. Useful as the control arm of an experiment: it shows what acting on stale weights
    costs.

    Example:
        >>> scheme = NoWeightSyncScheme()
        >>> scheme.init_on_sender("policy")
        >>> scheme.send()  # returns at once; nothing moves
    """

    def init_on_sender(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Remember ``model_id``; ``context`` and ``kwargs`` are accepted and ignored, except
        ``pipes=``, used only to tell the workers when :meth:`shutdown` is called. Under a
        TorchRL collector (``ctx=``), which sends its workers a policy without weights, the
        model's initial weights travel once, inside the pickled scheme."""
        kwargs = self._torchrl_sender_kwargs(model_id, context, kwargs)
        super().init_on_sender(model_id, pipes=kwargs.get("pipes"))
        self._torchrl_carry_initial_weights(kwargs.get("model"), context)

    def init_on_receiver(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Remember ``model_id``; ``context`` and ``kwargs`` are accepted and ignored, except
        ``pipe=``, on which :attr:`closed` notices the trainer's :meth:`shutdown`, ``model=``,
        which receives the initial weights carried from a TorchRL collector's trainer, and
        TorchRL's ``worker_idx=``."""
        kwargs = self._torchrl_receiver_kwargs(context, kwargs)
        super().init_on_receiver(model_id, pipe=kwargs.get("pipe"), model=kwargs.get("model"))

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

    def _legacy_transport(self, pipe: Any) -> NullTransport:
        return NullTransport()
