"""``sync=none``: synchronisation switched off."""

from __future__ import annotations

from typing import Any

from weightsync.errors import ModelPathError
from weightsync.schemes.base import WeightSyncScheme
from weightsync.transports.null import NullReceiver, NullSender


class NoWeightSyncScheme(WeightSyncScheme, backend="none"):
    """No-op scheme: workers keep the weights they started with.

    The init calls accept and ignore their arguments (as the reference API says), except the
    pipes (``pipes=``, ``pipe=``), which only tell the workers of :meth:`shutdown`, and the
    model, if given or on the context. A send moves no bytes. Useful as the control arm of an
    experiment: it shows what acting on stale weights costs.

    Example:
        >>> scheme = NoWeightSyncScheme()
        >>> scheme.init_on_sender("policy")
        >>> scheme.send()  # returns at once; nothing moves
    """

    ignores_unknown_keywords = True

    def init_on_sender(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """As every scheme's, but a context's ``pipes`` are not this scheme's to close."""
        kwargs.setdefault("pipes", None)
        super().init_on_sender(model_id, context, **kwargs)

    def init_on_receiver(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """As every scheme's, but a context's ``pipe`` is not this scheme's to watch."""
        kwargs.setdefault("pipe", None)
        super().init_on_receiver(model_id, context, **kwargs)

    def _find_model(self, model_id: str, context: Any, model: Any) -> Any:
        """The model if the context has it; a context without it is no error here."""
        try:
            return super()._find_model(model_id, context, model)
        except ModelPathError:
            return None

    def _build_sender_transport(self, pipes: list | None, num_workers: int | None) -> NullSender:
        return NullSender(pipes)

    def _build_receiver_transport(self, pipe: Any) -> NullReceiver:
        return NullReceiver(pipe)
