"""The transport contract shared by every backend.

A transport moves weights between one trainer and its workers; it knows nothing of models.
``TransportBackend`` is the minimal protocol of TorchRL's ``torchrl.weight_update`` (a user may plug
in their own); :class:`Update` is what a worker-side transport hands to a receiver.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

from weightsync.flat import FlatBuffer


@runtime_checkable
class TransportBackend(Protocol):
    """Anything that can carry weights for a model id and tell whether its peer is there."""

    def send_weights(self, model_id: str, weights: Any) -> None:
        """Deliver ``weights`` for ``model_id`` (blocking until the peer has them)."""

    def receive_weights(self, timeout: float = 1.0) -> tuple[str, Any] | None:
        """Return ``(model_id, weights)``, or None if nothing arrived within ``timeout`` s."""

    def check_connection(self) -> bool:
        """Whether the peer is still reachable."""


class Update(NamedTuple):
    """A new version of a model's weights, as a worker-side transport presents it.

    ``zero_copy`` says the buffer is an immutable published snapshot the worker may alias (its
    parameters become views of it); otherwise the worker must copy out before acknowledging.
    """

    model_id: str
    version: int
    buffer: FlatBuffer
    zero_copy: bool
