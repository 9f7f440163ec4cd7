"""The two ends of a synchronised model: :class:`WeightSender` and :class:`WeightReceiver`.

A sender lives in the trainer and pushes one model's weights to all (or chosen) workers; a
receiver lives in one worker and applies what arrives to that worker's copy. Both are generic:
each is handed its model id, model, weight format and transport (a
:class:`~weightsync.transports.base.SenderTransport` or
:class:`~weightsync.transports.base.ReceiverTransport`), so the same send/receive logic
(versions, validation, all-or-nothing apply, zero-copy adoption) serves every scheme. The send
path flows one way: endpoint, transport, flat buffer, weights.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from torch import nn

from weightsync.binding import BoundModule, ReceivingModule
from weightsync.errors import SyncTimeoutError, WeightMismatchError
from weightsync.flat import FlatBuffer
from weightsync.sources import prepare_weights
from weightsync.strategy import DEFAULT_FORMAT, WeightStrategy
from weightsync.timeouts import check_timeout
from weightsync.transports.base import ReceiverTransport, SenderTransport, Update
from weightsync.weights import (
    FlatWeights,
    check_finite,
    check_materialized,
    flatten_weights,
    meta_keys,
    set_extra_states,
    weight_mismatches,
)

log = logging.getLogger(__name__)


class EndpointSource(Protocol):
    """What an endpoint can be built from instead of its arguments, ``WeightSender(scheme)`` (the
    reference API's form): a scheme says what the endpoint of ``role`` (``"sender"`` or
    ``"receiver"``) is made of, as constructor keywords."""

    def endpoint_options(self, role: str) -> dict[str, Any]: ...


class WeightSender:
    """Trainer side: sends one model's weights to the workers of a transport.

    ``send`` blocks until the chosen workers have the new weights (pipe: applied and
    acknowledged; shared-mem: published as a complete snapshot they adopt at their next
    ``receive``). ``send_async`` starts the same work and returns at once; the trainer must call
    ``wait_async`` before it next changes the weights (before ``optimizer.step()``), and may run
    forward/backward passes in between.

    Each send carries a version, one higher than the last; ``acked_versions`` tells, per worker,
    the version it is known to hold (None when unknown, e.g. after a failed send).

    Args:
        model_id: the model's id (errors name it; a path on ``context``).
        transport: the trainer side of the transport.
        model: the model sent when ``send()`` is given no weights.
        context: an object the model id and string weights resolve on.
        strategy: the weight format at the API boundary (default ``DEFAULT_FORMAT``).
        reject_non_finite: refuse weights holding NaN or inf.
        bind_source: keep the model's tensors in the transport's source buffer (same
            ``nn.Parameter`` objects, new storage) so a send copies one block, or nothing.
        adoption_timeout: when set, ``wait_async`` also waits until every live worker holds the
            version (``acked_versions``), up to this many seconds (or the wait's ``timeout``):
            for transports that return once it is published (shared-mem), what TorchRL's
            ``sync=True`` and its collectors' ``update_policy_weights_`` promise.

    A scheme builds its sender; ``WeightSender(scheme)`` asks the scheme for these arguments.
    """

    def __init__(
        self,
        model_id: str | EndpointSource | None = None,
        transport: SenderTransport | None = None,
        *,
        model: Any = None,
        context: Any = None,
        strategy: WeightStrategy | None = None,
        reject_non_finite: bool = False,
        bind_source: bool = True,
        adoption_timeout: float | None = None,
    ):
        if hasattr(model_id, "endpoint_options"):  # WeightSender(scheme)
            self.__init__(**model_id.endpoint_options("sender"))
            return
        if transport is None:
            raise ValueError("a WeightSender needs a transport (or a scheme to take it from)")
        self.model_id = model_id
        self.transport = transport
        self.model = model
        self.context = context
        self.strategy = strategy or WeightStrategy(DEFAULT_FORMAT)
        self.reject_non_finite = reject_non_finite
        self.bind_source = bind_source
        self.adoption_timeout = adoption_timeout
        self.version = 0
        self._pending: int | None = None
        self._targets: list[int] | None = None  # the workers of the pending send (None: all)
        self._bound: BoundModule | None = None  # the model's tensors, and their source buffer
        self._warned_staging = False

    def __getstate__(self) -> dict[str, Any]:
        # A sender travels without its runtime (transport, context, buffers).
        state = dict(self.__dict__)
        state.update(transport=None, context=None, model=None, _pending=None, _bound=None)
        return state

    @property
    def acked_versions(self) -> dict[int, int | None]:
        return dict(self.transport.acked_versions)

    def send(self, weights: Any = None, worker_ids: int | list[int] | None = None) -> None:
        """Send ``weights`` (default: the model) and block until delivered."""
        self.send_async(weights, worker_ids)
        self.wait_async()

    def send_async(self, weights: Any = None, worker_ids: int | list[int] | None = None) -> None:
        """Start sending; pair with :meth:`wait_async`. RuntimeError if one is already pending."""
        if self._pending is not None:
            raise RuntimeError(
                f"a send of version {self._pending} of model {self.model_id!r} is still "
                "pending; call wait_async() before starting another"
            )
        if not self.transport.carries_weights:  # no synchronisation: nothing is extracted
            self.version += 1
            self._pending = self.version
            return
        flat, source = self._outgoing(weights)
        if source is None:  # (a bound model lives in a real buffer: it cannot be on meta)
            check_materialized(flat, self.model_id)
        if self.reject_non_finite:
            check_finite(flat, self.model_id)
        if isinstance(worker_ids, int):
            worker_ids = [worker_ids]
        # The version is spent only once the update is on its way: weights refused before that
        # (bad worker ids, non-finite values, a misfit) leave the sender exactly as it was.
        self.transport.start(self.model_id, self.version + 1, flat, worker_ids, source=source)
        self.version += 1
        self._pending = self.version
        self._targets = worker_ids

    def wait_async(self, timeout: float | None = None) -> None:
        """Block until the pending send is delivered; RuntimeError if none is pending."""
        if self._pending is None:
            raise RuntimeError(
                f"wait_async() called for model {self.model_id!r} with no send pending"
            )
        if timeout is not None:
            check_timeout(timeout)
        version, self._pending = self._pending, None
        try:
            self.transport.finish(timeout)
        finally:
            self._leave_retired_source()
        targets, self._targets = self._targets, None
        if self.adoption_timeout is not None:
            wait = self.adoption_timeout if timeout is None else timeout
            self._await_adoption(version, targets, wait)

    def connect(self, timeout: float | None = None, weights: Any = None) -> None:
        """Send the initial weights (default: the model's) to every worker and wait until each
        has them."""
        if timeout is not None:
            check_timeout(timeout)  # before anything is sent
        self.send_async(weights)
        self.wait_async(timeout)

    def _await_adoption(self, version: int, targets: list[int] | None, timeout: float) -> None:
        """Wait until every target (None: every live worker) holds ``version`` or newer;
        SyncTimeoutError naming the others after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            lagging = [
                w
                for w, v in self.transport.acked_versions.items()
                if (targets is None or w in targets) and (v is None or v < version)
            ]
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise SyncTimeoutError(
                    f"worker(s) {lagging} did not adopt version {version} of model "
                    f"{self.model_id!r} within {timeout:g} s; they may be stuck (e.g. in a long "
                    "rollout: raise the timeout) or dead, or build the scheme with sync=False to "
                    "return once the version is published",
                    workers=lagging,
                )
            time.sleep(0.0005)

    def remove_workers(self, worker_ids: list[int]) -> None:
        """Go on without these workers (e.g. the ``workers`` of a PeerDiedError)."""
        self.transport.remove_workers(list(worker_ids))

    def _outgoing(self, weights: Any) -> tuple[FlatWeights, FlatBuffer | None]:
        """The weights to send in flat form, and the bound flat buffer they live in (if any)."""
        if weights is None and isinstance(self.model, nn.Module):
            flat, source = self._model_weights(self.model)
        else:
            prepared = prepare_weights(
                weights, self.model_id, self.strategy, self.context, self.model
            )
            if prepared is None:
                raise ValueError(
                    f"nothing to send for model {self.model_id!r}: pass weights=, or give the "
                    "scheme the model (init_on_sender(model_id, model=...) or a context)"
                )
            flat, source = flatten_weights(prepared), None
        # A model bound to a host-memory source buffer is not on the GPU: only others may be.
        if (
            source is None
            and not self.transport.device_direct
            and not self._warned_staging
            and any(t.is_cuda for t in flat.tensors.values())
        ):
            self._warned_staging = True
            warnings.warn(
                f"model {self.model_id!r} lives on the GPU; the transport stages its weights "
                "through CPU memory (a device-to-host copy per send). Workers on the GPU copy "
                "them back to their device.",
                stacklevel=4,
            )
        return flat, source

    def _model_weights(self, model: nn.Module) -> tuple[FlatWeights, FlatBuffer | None]:
        """The model's weights, bound first to the transport's source buffer when allowed; one
        read of the tensors' addresses per send."""
        if self._bound is None or self._bound.module is not model:
            self._bound = BoundModule(model, watch_shapes=False)  # nothing validates it here
        bound = self._bound
        live = bound.weights(live=True)
        if self.bind_source and not bound.is_bound():
            buffer = self.transport.source_buffer(live)
            if buffer is not None:
                bound.bind(buffer)
        flat = bound.weights(recheck=False)
        return flat, bound.buffer if bound.is_bound() else None

    def _leave_retired_source(self) -> None:
        """Move the trainer model out of a source buffer its transport retired (the pipe scheme
        retires its staging buffer when a worker timed out, as that worker may still copy it)."""
        bound = self._bound
        if bound is None or bound.buffer is None or not self.transport.retired(bound.buffer):
            return
        bound.buffer = None
        fresh = self.transport.source_buffer(bound.weights(live=True))
        if fresh is not None:
            bound.bind(fresh)  # copies the weights into a fresh buffer and re-points the model


class WeightReceiver:
    """Worker side: applies updates of one model to this worker's copy.

    Every update is validated against the worker's model before anything is written; a misfit
    is refused (the trainer's ``send`` raises, naming this worker) and the model stays exactly as
    it was. ``version`` is the version of the weights the model holds (0: its initial weights).

    Args:
        model_id: the model's id (errors name it).
        transport: this worker's side of the transport.
        model: the worker's copy of the model (an ``nn.Module``, TensorDict or state_dict).
        strategy: the weight format (for :meth:`apply_weights`).
        materialize_meta: give a module whose tensors are on the ``meta`` device (no storage:
            TorchRL's collectors send workers such a policy) CPU storage before the first update
            is written; otherwise such an update is refused, saying so.
        apply_lock: the lock that keeps updates out of the model (see Threads below); pass one
            to share it with other code that must see one version at a time (TorchRL's
            collectors: their rollouts hold it). Default: a lock of the receiver's own.
        on_applied: called (under that lock) after each update is applied and acknowledged.

    :attr:`after_apply_weights` holds what is called after each :meth:`apply_weights` (a
    compatibility layer acknowledges there weights the worker took by other means).

    A scheme builds its receiver; ``WeightReceiver(scheme)`` asks the scheme for these
    arguments.

    Threads: :meth:`receive` changes the model's tensors (their values, or where they live). A
    worker that uses the model from other threads while one thread receives wraps each use in
    ``with receiver.reading():`` (an uncontended lock: about a tenth of a microsecond); an update
    is applied only while no thread is inside such a block, so a block sees one version from
    start to end. A receive that finds the model in use keeps the update and applies it at a
    later call.
    """

    def __init__(
        self,
        model_id: str | EndpointSource | None = None,
        transport: ReceiverTransport | None = None,
        *,
        model: Any = None,
        strategy: WeightStrategy | None = None,
        materialize_meta: bool = False,
        apply_lock: threading.RLock | None = None,
        on_applied: Callable[[], None] | None = None,
    ):
        if hasattr(model_id, "endpoint_options"):  # WeightReceiver(scheme)
            self.__init__(**model_id.endpoint_options("receiver"))
            return
        if transport is None:
            raise ValueError("a WeightReceiver needs a transport (or a scheme to take it from)")
        self.model_id = model_id
        self.transport = transport
        self.model = model
        self.strategy = strategy or WeightStrategy(DEFAULT_FORMAT)
        self.materialize_meta = materialize_meta
        self.on_applied = on_applied
        self.after_apply_weights: list[Callable[[], None]] = []
        self.version = 0
        self._applied_any = False
        self.refused: list[str] | None = None  # the problems of the last update refused, if any
        self._validated: tuple | None = None  # (layout, extra keys, structure) checked
        self._misfit: tuple | None = None  # the same, for the last update refused
        self._bound: ReceivingModule | None = None  # the model, and where its tensors live
        self._in_use = apply_lock or threading.RLock()  # held by readers and while applying
        self._deferred: Update | None = None  # arrived while the model was in use

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(transport=None, model=None, _validated=None, _misfit=None, _bound=None)
        state.update(on_applied=None, after_apply_weights=[])
        del state["_in_use"], state["_deferred"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _in_use=threading.RLock(), _deferred=None)

    def reading(self) -> AbstractContextManager:
        """``with receiver.reading():`` keeps updates out of the model for the block's duration
        (for a worker that uses the model in threads other than the one calling receive())."""
        return self._in_use

    @property
    def closed(self) -> bool:
        """True once the trainer has shut the scheme down."""
        return self.transport.closed

    def receive(self, timeout: float = 0.001) -> bool:
        """Apply new weights if some arrive within ``timeout`` s; True when applied. Waits (up to
        ``timeout``) for other threads to leave their :meth:`reading` blocks first."""
        deadline = time.monotonic() + check_timeout(timeout, allow_zero=True)
        update, self._deferred = self._deferred, None
        update = update or self.transport.poll(timeout)
        if update is None:
            return False
        if not self._in_use.acquire(timeout=max(0.0, deadline - time.monotonic())):
            self._deferred = update  # in use: applied by a later call
            return False
        try:
            return self._take(update)
        finally:
            self._in_use.release()

    def _take(self, update: Update) -> bool:
        """Apply (or refuse) ``update``, with no reader inside :meth:`reading`."""
        if self._applied_any and update.version <= self.version:
            self.transport.acknowledge(update)  # not newer than what we hold: never go back
            return False
        try:
            self._apply_update(update)
        except WeightMismatchError as err:
            if err.problems != self.refused:  # said once per misfit, not once per update
                log.warning("worker refused version %d: %s", update.version, err)
            self.refused = err.problems  # recorded before the trainer hears of it
            self.transport.reject(update, str(err))
            return False
        except Exception as err:  # the trainer hears of any failure, then the worker does
            self.transport.reject(update, f"{type(err).__name__}: {err}")
            raise
        self.version = update.version
        self._applied_any = True
        self.refused = None
        self.transport.acknowledge(update)
        if self.on_applied is not None:
            self.on_applied()
        return True

    def connect(self, timeout: float) -> None:
        """Wait for the initial weights; SyncTimeoutError naming the model if none come, or
        WeightMismatchError if they came but do not fit this worker's model. Returns at once
        when an earlier :meth:`receive` already applied them."""
        check_timeout(timeout)
        if not self.transport.carries_weights or self._applied_any:
            return
        if not self.receive(timeout):
            if self.refused is not None:
                raise WeightMismatchError(self.model_id, self.refused)
            raise SyncTimeoutError(
                f"no initial weights for model {self.model_id!r} arrived from the trainer within "
                f"{timeout:g} s; did the trainer call connect() (or send())?"
            )

    def apply_weights(self, weights: Any) -> None:
        """Apply ``weights`` (any format) to the model, validated first. A model living in a
        shared snapshot (read-only in a worker) is first moved into this worker's own memory.
        Then each of :attr:`after_apply_weights` is called."""
        with self._in_use:  # as an update: never while a reader is inside reading()
            if self._bound is not None and self._bound.module is self.model:
                self._bound.leave_shared()
            self.strategy.apply_weights(self.model, weights, model_id=self.model_id)
        for call in self.after_apply_weights:
            call()

    def _apply_update(self, update: Update) -> None:
        model = self.model
        if not isinstance(model, nn.Module):
            self.strategy.apply_weights(model, update.buffer.read(), model_id=self.model_id)
            return
        if self._bound is None or self._bound.module is not model:
            self._bound = ReceivingModule(model)
        bound = self._bound
        live = bound.weights(live=True)
        # Checked again whenever the incoming layout or the model's structure changes.
        shape = (update.buffer.layout, update.buffer.extra_keys, bound.structure_stamp)
        if shape != self._validated:
            if shape == self._misfit and self.refused:  # refused as it is: not compared again
                raise WeightMismatchError(self.model_id, self.refused)
            if self.materialize_meta and meta_keys(live):  # TorchRL's workers get meta policies
                model.to_empty(device="cpu")
                bound = self._bound = ReceivingModule(model)
                live = bound.weights(live=True)
            incoming = update.buffer.layout.as_meta_weights(update.buffer.extra_keys)
            problems = weight_mismatches(live, incoming)
            problems += [
                f"{key!r}: this worker's tensor is on the meta device (no data to write into); "
                "materialise the model, e.g. module.to_empty(device='cpu'), before connect(), "
                "or build the scheme with materialize_meta=True"
                for key in meta_keys(live)
            ]
            if problems:
                self._misfit = shape
                raise WeightMismatchError(self.model_id, problems)
            self._validated = shape
        bound.take(update.buffer, zero_copy=update.zero_copy)
        set_extra_states(model, update.buffer.read_extra())
