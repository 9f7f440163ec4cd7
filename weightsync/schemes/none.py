"""``sync=none``: synchronisation switched off."""

from __future__ import annotations

from typing import Any

from weightsync.schemes.base import WeightSyncScheme
from weightsync.transports.pipe import MPTransport


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
        super().init_on_sender(model_id)
        self._pipes = list(kwargs.get("pipes") or [])

    def init_on_receiver(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Remember ``model_id``; ``context`` and ``kwargs`` are accepted and ignored, except
        ``pipe=``, on which :attr:`closed` notices the trainer's :meth:`shutdown`."""
        super().init_on_receiver(model_id)
        self._pipe = kwargs.get("pipe")
        self._trainer_gone = False

    @property
    def closed(self) -> bool:
        """On a worker given a pipe: True once the trainer has shut down (or died)."""
        if self._pipe is not None and not getattr(self, "_trainer_gone", False):
            try:
                if self._pipe.poll(0):
                    self._pipe.recv()  # the only message a none-scheme trainer sends: close
                    self._trainer_gone = True
            except (EOFError, OSError):
                self._trainer_gone = True
        return getattr(self, "_trainer_gone", False)

    def shutdown(self) -> None:
        """Tell the workers (over the pipes given, if any) that the trainer is done."""
        for pipe in self._pipes or []:
            MPTransport(pipe).close()
        super().shutdown()

    def _build_sender_transport(self, pipes: list | None, num_workers: int | None) -> None:
        return None

    def _build_receiver_transport(self, pipe: Any) -> None:
        return None

    def create_transport(self, pipe_or_context: Any) -> None:
        return None
