"""The two ends of a synchronised model: :class:`WeightSender` and :class:`WeightReceiver`.

A sender lives in the trainer and pushes one model's weights to all (or chosen) workers; a
receiver lives in one worker and applies what arrives to that worker's copy. Both are generic:
the scheme that creates them supplies the transport, so the same send/receive logic (versions,
validation, all-or-nothing apply, zero-copy adoption) serves every scheme.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

from torch import nn

from weightsync.errors import WeightMismatchError
from weightsync.flat import FlatBuffer, alias_into, can_alias, copy_bytes, is_aliased
from weightsync.strategy import (
    FlatWeights,
    ModuleWeightsCache,
    check_finite,
    copy_weights,
    flatten_weights,
    set_extra_states,
    weight_mismatches,
)
from weightsync.transports.base import Update

if TYPE_CHECKING:
    from weightsync.schemes.base import WeightSyncScheme

log = logging.getLogger(__name__)


class WeightSender:
    """Trainer side: sends one model's weights to the workers of a scheme.

    ``send`` blocks until the chosen workers have the new weights (pipe: applied and
    acknowledged; shared-mem: published as a complete snapshot they adopt at their next
    ``receive``). ``send_async`` starts the same work and returns at once; the trainer must call
    ``wait_async`` before it next changes the weights (before ``optimizer.step()``), and may run
    forward/backward passes in between.

    Each send carries a version, one higher than the last; ``acked_versions`` tells, per worker,
    the version it is known to hold (None when unknown, e.g. after a failed send).
    """

    def __init__(self, scheme: WeightSyncScheme):
        self._scheme = scheme
        self.version = 0
        self._pending: int | None = None
        self._source: FlatBuffer | None = None  # the trainer model's own flat buffer, once bound
        self._warned_staging = False
        self._weights: ModuleWeightsCache | None = None  # the model's tensors, walked once
        self._bound_generation = -1  # the cache generation last seen aliased into _source

    def __getstate__(self) -> dict[str, Any]:
        # A sender travels without its scheme's runtime (context, pipes, buffers).
        state = dict(self.__dict__)
        state.update(_scheme=None, _pending=None, _source=None, _weights=None)
        state["_bound_generation"] = -1
        return state

    @property
    def acked_versions(self) -> dict[int, int | None]:
        transport = self._scheme._transport
        return {} if transport is None else dict(transport.acked_versions)

    def send(self, weights: Any = None, worker_ids: int | list[int] | None = None) -> None:
        """Send ``weights`` (default: the scheme's model) and block until delivered."""
        self.send_async(weights, worker_ids)
        self.wait_async()

    def send_async(self, weights: Any = None, worker_ids: int | list[int] | None = None) -> None:
        """Start sending; pair with :meth:`wait_async`. RuntimeError if one is already pending."""
        if self._pending is not None:
            raise RuntimeError(
                f"a send of version {self._pending} of model {self._scheme.model_id!r} is still "
                "pending; call wait_async() before starting another"
            )
        transport = self._scheme._transport
        if transport is None:  # no synchronisation: nothing is extracted, nothing moves
            self.version += 1
            self._pending = self.version
            return
        flat, source = self._outgoing(weights)
        if self._scheme.reject_non_finite:
            check_finite(flat, self._scheme.model_id)
        if isinstance(worker_ids, int):
            worker_ids = [worker_ids]
        # The version is spent only once the update is on its way: weights refused before that
        # (bad worker ids, non-finite values, a misfit) leave the sender exactly as it was.
        transport.start(self._scheme.model_id, self.version + 1, flat, worker_ids, source=source)
        self.version += 1
        self._pending = self.version

    def wait_async(self, timeout: float | None = None) -> None:
        """Block until the pending send is delivered; RuntimeError if none is pending."""
        if self._pending is None:
            raise RuntimeError(
                f"wait_async() called for model {self._scheme.model_id!r} with no send pending"
            )
        self._pending = None
        transport = self._scheme._transport
        if transport is not None:
            try:
                transport.finish(timeout)
            finally:
                self._leave_retired_source()

    def _leave_retired_source(self) -> None:
        """Move the trainer model out of a source buffer its transport retired (the pipe scheme
        retires its staging buffer when a worker timed out, as that worker may still copy it)."""
        staging = getattr(self._scheme._transport, "staging", self._source)
        if self._source is None or staging is self._source:
            return
        self._source = None
        model = self._scheme._model
        if isinstance(model, nn.Module) and self._scheme.bind_source:
            self._bind(model)  # copies the weights into a fresh buffer and re-points the model

    def remove_workers(self, worker_ids: list[int]) -> None:
        """Go on without these workers (e.g. the ``workers`` of a PeerDiedError)."""
        if self._scheme._transport is not None:
            self._scheme._transport.remove_workers(list(worker_ids))

    def update_weights(self, weights: Any) -> None:
        """Legacy: send ``weights`` to all workers (blocking)."""
        self.send(weights)

    def _outgoing(self, weights: Any) -> tuple[FlatWeights, FlatBuffer | None]:
        """The weights to send in flat form, and the bound flat buffer they live in (if any)."""
        scheme = self._scheme
        model = scheme._model if weights is None else None
        if isinstance(model, nn.Module):
            cache = self._cache_for(model)
            if scheme.bind_source:
                self._bind(model)  # reads the tensors' addresses: no need to read them twice
            flat = cache.get(recheck=not scheme.bind_source)
            if self._source is not None and cache.generation == self._bound_generation:
                return flat, self._source  # still bound, same tensors: no need to check again
        else:
            prepared = scheme.prepare_weights(
                weights, scheme.model_id, scheme.strategy, scheme._context
            )
            if prepared is None:
                raise ValueError(
                    f"nothing to send for model {scheme.model_id!r}: pass weights=, or give the "
                    "scheme the model (init_on_sender(model_id, model=...) or a context)"
                )
            flat = flatten_weights(prepared)
        if not self._warned_staging and any(t.is_cuda for t in flat.tensors.values()):
            self._warned_staging = True
            warnings.warn(
                f"model {scheme.model_id!r} lives on the GPU; {type(scheme).__name__} stages its "
                "weights through CPU memory (a device-to-host copy per send). Workers on the "
                "GPU copy them back to their device.",
                stacklevel=4,
            )
        bound = self._source is not None and is_aliased(flat.tensors, self._source)
        return flat, self._source if bound else None

    def _cache_for(self, model: nn.Module) -> ModuleWeightsCache:
        if self._weights is None or self._weights.module is not model:
            self._weights, self._bound_generation = ModuleWeightsCache(model), -1
        return self._weights

    def _bind(self, model: nn.Module) -> None:
        """Re-point the trainer model's tensors into one flat buffer, once per layout."""
        cache = self._cache_for(model)
        live = cache.get(live=True)
        if self._source is not None and cache.generation == self._bound_generation:
            return
        if self._source is None or not is_aliased(live.tensors, self._source):
            buffer = self._scheme._transport.source_buffer(live)
            if buffer.mismatches(live) or not can_alias(live.tensors, buffer):
                return
            alias_into(live.tensors, buffer)
            self._source = buffer
            live = cache.get(live=True)  # new addresses: a new generation
        self._bound_generation = cache.generation


class WeightReceiver:
    """Worker side: applies updates of one model to this worker's copy.

    Every update is validated against the worker's model before anything is written; a misfit
    is refused (the trainer's ``send`` raises, naming this worker) and the model stays exactly as
    it was. ``version`` is the version of the weights the model holds (0: its initial weights).
    """

    def __init__(self, scheme: WeightSyncScheme):
        self._scheme = scheme
        self.version = 0
        self._applied_any = False
        self.refused: list[str] | None = None  # the problems of the last update refused, if any
        self._validated: tuple | None = None  # (layout, extra keys, structure) checked
        self._own: FlatBuffer | None = None  # this worker's private flat copy (copying transports)
        self._weights: ModuleWeightsCache | None = None  # the model's tensors, walked once
        self._own_generation = -1  # the cache generation last seen aliased into _own

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_scheme=None, _validated=None, _own=None, _weights=None)
        state["_own_generation"] = -1
        return state

    def receive(self, timeout: float = 0.001) -> bool:
        """Apply new weights if some arrive within ``timeout`` s; True when applied."""
        transport = self._scheme._transport
        if transport is None:
            return False
        update = transport.poll(timeout)
        if update is None:
            return False
        if self._applied_any and update.version <= self.version:
            transport.acknowledge(update)  # not newer than what we hold: never go back
            return False
        try:
            self._apply_update(update)
        except WeightMismatchError as err:
            log.warning("worker refused version %d: %s", update.version, err)
            self.refused = err.problems  # recorded before the trainer hears of it
            transport.reject(update, str(err))
            return False
        self.version = update.version
        self._applied_any = True
        self.refused = None
        transport.acknowledge(update)
        return True

    def apply_weights(self, weights: Any) -> None:
        """Apply ``weights`` (any format) to the model, validated first."""
        self._scheme.strategy.apply_weights(
            self._scheme._model, weights, model_id=self._scheme.model_id
        )

    def _apply_update(self, update: Update) -> None:
        model = self._scheme._model
        if not isinstance(model, nn.Module):
            self.apply_weights(update.buffer.read())
            return
        if self._weights is None or self._weights.module is not model:
            self._weights, self._own_generation = ModuleWeightsCache(model), -1
        live = self._weights.get(live=True)
        # Checked again whenever the incoming layout or the model's structure changes.
        shape = (update.buffer.layout, update.buffer.extra_keys, self._weights.structure_stamp)
        if shape != self._validated:
            incoming = update.buffer.layout.as_meta_weights(update.buffer.extra_keys)
            problems = weight_mismatches(live, incoming)
            if problems:
                raise WeightMismatchError(self._scheme.model_id, problems)
            self._validated = shape
        if (
            update.zero_copy
            and update.buffer.layout.worth_aliasing
            and can_alias(live.tensors, update.buffer)
        ):
            alias_into(live.tensors, update.buffer, copy=False)
        elif self._copy_in_one_block(live, update.buffer):
            pass
        else:
            copy_weights(live, update.buffer.read())
        set_extra_states(model, update.buffer.read_extra())

    def _copy_in_one_block(self, live: FlatWeights, incoming: FlatBuffer) -> bool:
        """Copy ``incoming`` into this worker's private flat buffer: one memcpy for the model."""
        if self._own is None or self._own.layout != incoming.layout:
            if not can_alias(live.tensors, incoming):
                return False
            self._own = FlatBuffer(incoming.layout, extra_keys=incoming.extra_keys, shared=False)
            alias_into(live.tensors, self._own)
            self._weights.get(live=True)  # new addresses: a new generation
            self._own_generation = -1
        if self._weights.generation != self._own_generation:
            if not is_aliased(live.tensors, self._own):
                return False
            self._own_generation = self._weights.generation
        copy_bytes(self._own.tensor_region, incoming.tensor_region)
        return True
