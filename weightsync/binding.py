"""A module bound to one flat buffer: where a model's tensors live, for both endpoints.

Copying a model tensor by tensor costs a kernel (or a memcpy) per tensor; once its tensors live
in one :class:`~weightsync.flat.FlatBuffer`, the whole model is one block copy. A trainer keeps
its model in the buffer its transport sends from (:class:`BoundModule`); a worker's model either
adopts a published snapshot or lives in a private buffer it copies updates into
(:class:`ReceivingModule`, which owns that placement decision). A :class:`BoundModule` owns the
module's tensors (walked once, see :class:`~weightsync.weights.ModuleWeightsCache`), the buffer
they were bound to, and whether they still live there, re-checked only when their addresses may
have changed.
"""

from __future__ import annotations

from torch import nn

from weightsync.flat import FlatBuffer, alias_into, can_alias, copy_bytes, is_aliased
from weightsync.weights import FlatWeights, ModuleWeightsCache, copy_weights


class BoundModule:
    """``module``'s weights, and the flat buffer they may live in.

    Example:
        >>> import torch
        >>> bound = BoundModule(torch.nn.Linear(3, 2))
        >>> buffer = FlatBuffer.for_weights(bound.weights(live=True), shared=False)
        >>> bound.bind(buffer), bound.is_bound()
        (True, True)
    """

    def __init__(self, module: nn.Module, *, watch_shapes: bool = True):
        self.module = module
        self._cache = ModuleWeightsCache(module, watch_shapes=watch_shapes)
        #: The buffer the module was last bound to (None: never, or it moved out).
        self.buffer: FlatBuffer | None = None
        self._generation = -1  # the cache generation last seen living in ``buffer``

    def weights(self, *, live: bool = False, recheck: bool = True) -> FlatWeights:
        """The module's weights (see :meth:`ModuleWeightsCache.get`); ``recheck=True`` re-reads
        the tensors' addresses, which :meth:`is_bound` then relies on."""
        return self._cache.get(live=live, recheck=recheck)

    @property
    def structure_stamp(self) -> int:
        """Changes whenever a tensor may have been added, replaced, reshaped or re-typed (as of
        the last :meth:`weights` call that re-read the addresses)."""
        return self._cache.structure_stamp

    def is_bound(self) -> bool:
        """Whether the module's tensors live in :attr:`buffer`, as of the last :meth:`weights`
        call that re-read their addresses (checked in full only when those changed)."""
        if self.buffer is None:
            return False
        if self._cache.generation == self._generation:
            return True
        if not is_aliased(self._cache.get(live=True, recheck=False).tensors, self.buffer):
            return False
        self._generation = self._cache.generation
        return True

    def bind(self, buffer: FlatBuffer, *, copy: bool = True) -> bool:
        """Re-point the module's tensors into ``buffer`` (their values copied in first when
        ``copy``); False, changing nothing, when the buffer does not fit them or their device."""
        live = self._cache.get(live=True)
        if buffer.mismatches(live) or not can_alias(live.tensors, buffer):
            return False
        alias_into(live.tensors, buffer, copy=copy)
        self.buffer = buffer
        self._cache.get(live=True)  # new addresses: a new generation
        self._generation = self._cache.generation
        return True


class ReceivingModule(BoundModule):
    """A worker's model, and where an update's values go.

    :meth:`take` puts an incoming (already validated) buffer's values into the module: it
    adopts a published, immutable snapshot (its tensors become views of it: no byte copied)
    when the transport allows it and the layout is worth it; otherwise it copies into a private
    flat buffer of its own, one block for the whole model; failing that (tensors on several
    devices, say), tensor by tensor. It never writes into a buffer it does not own.

    Example:
        >>> import torch
        >>> trainer, worker = torch.nn.Linear(3, 2), ReceivingModule(torch.nn.Linear(3, 2))
        >>> update = FlatBuffer.for_weights(BoundModule(trainer).weights(live=True), shared=False)
        >>> _ = update.write(BoundModule(trainer).weights())
        >>> worker.take(update, zero_copy=False)
        >>> bool(torch.equal(worker.module.weight, trainer.weight)), worker.buffer is update
        (True, False)
    """

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self.own: FlatBuffer | None = None  # the private buffer updates are copied into

    def take(self, incoming: FlatBuffer, *, zero_copy: bool) -> None:
        """Give the module ``incoming``'s tensor values (see the class docstring)."""
        live = self.weights(live=True, recheck=False)
        if zero_copy and incoming.layout.worth_aliasing and can_alias(live.tensors, incoming):
            self.bind(incoming, copy=False)
        elif self._into_own(incoming):
            copy_bytes(self.own.tensor_region, incoming.tensor_region)
        else:
            copy_weights(live, incoming.read())

    def leave_shared(self) -> None:
        """Before the module is written by other means (``apply_weights``): move it out of an
        adopted snapshot (read-only in a worker) into its own buffer."""
        self.weights(live=True)
        self._into_own(self.buffer)

    def _into_own(self, like: FlatBuffer | None) -> bool:
        """Bind the module to its private buffer laid out like ``like`` (its values copied in),
        unless it lives there already; False when it cannot be bound."""
        if like is None:
            return False
        own = self.own
        if own is None or own.layout != like.layout:
            own = self.own = FlatBuffer(like.layout, extra_keys=like.extra_keys, shared=False)
        return (self.buffer is own and self.is_bound()) or self.bind(own)
