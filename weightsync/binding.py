"""A module bound to one flat buffer: the state both endpoints keep about their model.

Copying a model tensor by tensor costs a kernel (or a memcpy) per tensor; once its tensors live
in one :class:`~weightsync.flat.FlatBuffer`, the whole model is one block copy. A trainer keeps
its model in the buffer its transport sends from, a worker in a private buffer it copies updates
into. :class:`BoundModule` owns that state: the module's tensors (walked once, see
:class:`~weightsync.weights.ModuleWeightsCache`), the buffer they were bound to, and whether they
still live there, re-checked only when their addresses may have changed.
"""

from __future__ import annotations

from torch import nn

from weightsync.flat import FlatBuffer, alias_into, can_alias, is_aliased
from weightsync.weights import FlatWeights, ModuleWeightsCache


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
