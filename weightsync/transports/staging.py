"""The trainer's staging buffers: where an update waits while the workers take it.

A transport that lets its workers read from the trainer (the pipe scheme's shared buffer, the
distributed scheme's sends in flight) stages each update in a flat buffer of its own and keeps
two rules, whatever moves the bytes:

* the trainer's model may *live* in the first buffer (:meth:`Staging.source`): sends then copy
  nothing on the trainer side; weights passed explicitly to ``send(weights=...)`` are staged in
  the second one while the model lives in the first, so a send never writes into the model;
* a buffer that a failed worker may still read (a worker that timed out may copy it when it
  resumes) is *retired* (:meth:`Staging.retire`): nothing writes into it again (nor the trainer's
  optimizer, whose model then moves out, see :meth:`Staging.retired`); the next send stages into
  a fresh buffer, so a late reader sees exactly one version, never a mix.

A buffer is re-created when the weights no longer fit it (another layout, another device).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from weightsync.flat import FlatBuffer
from weightsync.weights import FlatWeights

#: The buffer the trainer's model may live in, and the one for weights passed to ``send()``.
MODEL_SLOT, GIVEN_SLOT = 0, 1


def buffer_bytes(buffer: FlatBuffer) -> int:
    return buffer.data.numel() * buffer.data.element_size()


class Staging:
    """The two staging buffers of one trainer-side transport.

    Args:
        shared: allocate the buffers in shared memory (workers on this host map them).
        device_for: where the buffer for some weights lives (default: host memory).
    """

    def __init__(
        self,
        *,
        shared: bool,
        device_for: Callable[[FlatWeights], torch.device] | None = None,
    ):
        self.shared = shared
        self.device_for = device_for or (lambda weights: torch.device("cpu"))
        self.buffers: list[FlatBuffer | None] = [None, None]  # per slot
        self.lent = False  # whether the model slot's buffer was handed out as a source

    @property
    def model_buffer(self) -> FlatBuffer | None:
        """The buffer the trainer's model may live in, if one was made."""
        return self.buffers[MODEL_SLOT]

    def source(self, weights: FlatWeights) -> FlatBuffer:
        """The buffer the trainer's model may live in (made, or re-made when ``weights`` no
        longer fit it); from now on sends of other weights go to the second buffer."""
        buffer = self.fitting(MODEL_SLOT, weights)
        self.lent = True
        return buffer

    def stage(self, weights: FlatWeights, source: FlatBuffer | None) -> tuple[int, FlatBuffer]:
        """Stage ``weights`` for a send: ``(slot, buffer)``. When ``source`` is the model's
        buffer the tensors are there already and only the extra state is written; otherwise
        they are copied into a buffer the model does not live in."""
        if source is not None and source is self.model_buffer:
            source.write_extra(weights.extra)
            return MODEL_SLOT, source
        slot = GIVEN_SLOT if self.lent else MODEL_SLOT
        buffer = self.fitting(slot, weights)
        buffer.write(weights)
        return slot, buffer

    def fitting(self, slot: int, weights: FlatWeights) -> FlatBuffer:
        """The buffer of ``slot``, re-created if ``weights`` do not fit it (layout or device).
        A failed allocation (e.g. :class:`~weightsync.SharedMemoryError`) leaves the slot as
        it was."""
        device = self.device_for(weights)
        buffer = self.buffers[slot]
        if buffer is None or buffer.data.device != device or buffer.mismatches(weights):
            buffer = FlatBuffer.for_weights(weights, shared=self.shared, device=device)
            self.buffers[slot] = buffer
            if slot == MODEL_SLOT:
                self.lent = False
        return buffer

    def retire(self, buffer: FlatBuffer | None = None) -> None:
        """Never write into ``buffer`` again (None: into any buffer made so far)."""
        for slot, held in enumerate(self.buffers):
            if held is not None and (buffer is None or held is buffer):
                self.buffers[slot] = None
                if slot == MODEL_SLOT:
                    self.lent = False

    def retired(self, buffer: FlatBuffer) -> bool:
        """Whether the trainer's model must move out of ``buffer`` (handed out by
        :meth:`source`): it was retired or replaced."""
        return buffer is not self.model_buffer

    @property
    def shared_bytes(self) -> int:
        """Bytes of shared memory these buffers hold."""
        return sum(buffer_bytes(b) for b in self.buffers if b is not None and b.data.is_shared())
