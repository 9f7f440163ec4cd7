"""``sync=none``: synchronisation switched off."""

from __future__ import annotations

from typing import Any

from weightsync.schemes.base import WeightSyncScheme


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

    def _build_sender_transport(self, pipes: list | None, num_workers: int | None) -> None:
        return None

    def _build_receiver_transport(self, pipe: Any) -> None:
        return None

    def create_transport(self, pipe_or_context: Any) -> None:
        return None
