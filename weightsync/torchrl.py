"""TorchRL's collector protocol: what TorchRL's own collectors call on a scheme, in one place.

A TorchRL user hands a scheme to a collector (``MultiSyncCollector(...,
weight_sync_schemes={"policy": scheme})``) and the collector drives it. TorchRL 0.14's protocol,
with the process and moment of each call:

* trainer: ``init_on_sender(model_id=..., context=collector, ctx=mp_context)`` before the workers
  start; the scheme builds its own channels (one pipe per worker, from ``ctx``), never the
  collector's control pipes. The worker ends travel to the workers inside the pickled scheme.
  ``connect()`` once the workers run; ``send(weights, worker_ids)`` per
  ``collector.update_policy_weights_()``, which first checks
  ``isinstance(scheme, torchrl.weight_update.WeightSyncScheme)``;
* worker: ``init_on_receiver(model=policy, model_id=..., worker_idx=i)`` with no pipe (the scheme
  finds its channel among the carried ones) and ``connect(worker_idx=i)``. The policy arrives on
  the ``meta`` device, so the receiver materialises it. The worker loop never calls
  ``receive()``: a background thread does, and after each update calls the worker collector's
  ``update_policy_weights_()``, which bumps its policy version.

weightsync keeps its guarantees inside the collector: the receiver applies an update only while
holding a lock that the worker collector's ``rollout`` holds too, so no batch mixes two versions;
``send`` returns once every worker has taken up the new version (what ``sync=None`` means under
a collector), and a dead or silent worker is a named error within ``timeout``.

The scheme mixes :class:`TorchRLSchemeMixin` in and calls its ``_torchrl_*`` hooks; the endpoints
get what they need from it as constructor arguments (see :meth:`_torchrl_endpoint_options`).
This module imports nothing from torchrl at import time: :func:`register_with_torchrl` does, when
asked, and a collector's ``init_on_sender`` does only when torchrl is already loaded (it is: the
collector called us). TorchRL's older calls live in :mod:`weightsync.legacy`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict
from torch import nn

from weightsync import lifetime
from weightsync.errors import PeerDiedError
from weightsync.sources import resolve_model

log = logging.getLogger(__name__)

#: TorchRL's backend names (``WeightSyncScheme.from_backend``) and aliases, as weightsync's.
BACKEND_ALIASES = {
    "shared": "shared-mem",
    "thread": "shared-mem",
    "process": "pipe",
    "multiprocessing": "pipe",
    "direct": "none",
}

#: Seconds a worker's receiving thread waits for news before it looks whether it must stop.
RECEIVE_WAIT_S = 0.05


def canonical_backend(name: str) -> str:
    """weightsync's name for a backend name or TorchRL alias (``"shared"`` → ``"shared-mem"``)."""
    return BACKEND_ALIASES.get(name, name)


def register_with_torchrl() -> None:
    """Make every weightsync scheme an ``isinstance`` of ``torchrl.weight_update.WeightSyncScheme``
    (a virtual subclass: TorchRL's base class is an ``abc.ABCMeta``). Collectors check it before
    each ``update_policy_weights_``; a scheme initialised by a collector registers itself, so
    calling this is needed only to pass that check elsewhere. ImportError without torchrl."""
    try:
        from torchrl.weight_update import WeightSyncScheme as TorchRLScheme
    except ImportError as err:
        raise ImportError(
            "register_with_torchrl() needs torchrl: pip install 'weightsync[torchrl]'"
        ) from err
    if not issubclass(TorchRLSchemeMixin, TorchRLScheme):
        TorchRLScheme.register(TorchRLSchemeMixin)  # and so every weightsync scheme


class _Receiving:
    """A worker's receiving thread and the lock it shares with the collector's rollouts."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.join_timeout = 0.0

    def start(self, loop: Any, name: str, join_timeout: float) -> None:
        """Run ``loop(self)`` in a daemon thread, stopped by :meth:`close` (at exit too)."""
        self.join_timeout = join_timeout
        self.thread = threading.Thread(target=loop, args=(self,), name=name, daemon=True)
        self.thread.start()
        lifetime.close_at_exit(self)

    def close(self) -> None:
        """Stop the thread and wait (at most ``join_timeout`` s) until it has ended."""
        self.stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=self.join_timeout)
        lifetime.closed(self)


class TorchRLSchemeMixin:
    """The part of a scheme that TorchRL's collectors use; see the module docstring.

    Its state: ``sync`` and ``materialize_meta`` (options), ``_collector_mode`` and
    ``_carried_pipes`` (set up by a collector; pickled to the workers with the scheme),
    ``_initial_weights`` (the ``none`` scheme's, pickled too), ``_worker_idx``, and the runtime
    ``_synchronized`` and ``_receiving`` (never pickled).
    """

    role: str | None
    model_id: str | None
    strategy: Any
    timeout: float
    sync: bool | None
    materialize_meta: bool
    _context: Any
    _model: Any
    _sender: Any
    _receiver: Any
    _transport: Any
    _synchronized: bool
    _receiving: _Receiving | None
    _collector_mode: bool = False
    _carried_pipes: list | None = None
    _initial_weights: Any = None
    _worker_idx: int | None = None

    # ------------------------------------------------------------------ TorchRL's properties
    @property
    def initialized_on_sender(self) -> bool:
        return self.role == "sender"

    @property
    def initialized_on_receiver(self) -> bool:
        return self.role == "receiver"

    @property
    def synchronized_on_sender(self) -> bool:
        return self.role == "sender" and bool(self._synchronized)

    @synchronized_on_sender.setter
    def synchronized_on_sender(self, value: bool) -> None:
        self._synchronized = bool(value)

    @property
    def synchronized_on_receiver(self) -> bool:
        return self.role == "receiver" and bool(self._synchronized)

    @synchronized_on_receiver.setter
    def synchronized_on_receiver(self, value: bool) -> None:
        self._synchronized = bool(value)

    @property
    def worker_idx(self) -> int | None:
        """The worker index a collector gave ``init_on_receiver`` (None elsewhere)."""
        return self._worker_idx

    @property
    def strategy_str(self) -> str:
        """The weight format's name, ``"state_dict"`` or ``"tensordict"``."""
        return self.strategy.extract_as

    @property
    def model(self) -> Any:
        """The model this side sends from or receives into."""
        return self._model

    @model.setter
    def model(self, model: Any) -> None:
        # TorchRL's worker re-points this at the policy its collector actually runs (a copy
        # moved to the policy device); the endpoint uses the new model from its next update on.
        self._model = model
        for endpoint in (self._sender, self._receiver):
            if endpoint is not None:
                endpoint.model = model

    @property
    def context(self) -> Any:
        """The object model ids resolve on (TorchRL: the collector)."""
        return self._context

    @context.setter
    def context(self, context: Any) -> None:
        self._context = context
        if self._receiving is not None:
            _guard_rollouts(context, self._receiving.lock)

    # ----------------------------------------------------------------- hooks of the scheme
    def _torchrl_sender_kwargs(
        self, model_id: str, context: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """Turn TorchRL's ``init_on_sender`` arguments into weightsync's.

        ``ctx=`` (a multiprocessing context) means a collector is initialising us: build one pipe
        per worker and carry the worker ends in this scheme's pickled state. ``params_map=``
        (``{worker_idx: weights}``) gives the initial weights and the number of workers.
        """
        kwargs = dict(kwargs)
        params_map = kwargs.pop("params_map", None)
        if params_map:
            kwargs.setdefault("num_workers", len(params_map))
            kwargs.setdefault("model", next(iter(params_map.values())))
        ctx = kwargs.pop("ctx", None)
        if ctx is None:
            return kwargs
        num_workers = kwargs.get("num_workers", getattr(context, "num_workers", None))
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(
                f"init_on_sender(ctx=...) builds one channel per worker but cannot tell how many: "
                f"got num_workers={num_workers!r}; pass num_workers= or a context with .num_workers"
            )
        pairs = [ctx.Pipe() for _ in range(num_workers)]
        kwargs["pipes"] = [trainer_end for trainer_end, _ in pairs]
        kwargs.setdefault("processes", CollectorWorkers(context))
        self._carried_pipes = [worker_end for _, worker_end in pairs]
        self._collector_mode = True  # pickled to the workers with the carried ends
        self.materialize_meta = True  # the collector strips the workers' policy to `meta`
        if "torchrl" in sys.modules:
            register_with_torchrl()
        return kwargs

    def _torchrl_receiver_kwargs(self, context: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Turn TorchRL's ``init_on_receiver(model=..., model_id=..., worker_idx=i)`` into
        weightsync's: without a pipe, take worker ``i``'s end of the carried channels (and close
        the others', so a worker's death reaches the trainer as end of file)."""
        kwargs = dict(kwargs)
        if "worker_idx" in kwargs:
            self._worker_idx = kwargs.pop("worker_idx")
        worker_idx = self._worker_idx
        if self._collector_mode and self._receiving is None:
            self._receiving = _Receiving()  # before the receiver is built: it takes the lock
        carried = self._carried_pipes
        if not carried or "pipe" in kwargs or getattr(context, "pipe", None) is not None:
            return kwargs
        if worker_idx is None or not 0 <= worker_idx < len(carried):
            raise ValueError(
                f"{type(self).__name__} was set up by a collector for {len(carried)} workers; "
                f"init_on_receiver needs worker_idx in [0, {len(carried)}), got {worker_idx!r}"
            )
        for i, end in enumerate(carried):
            if i != worker_idx:
                end.close()
        kwargs["pipe"] = carried[worker_idx]
        self._carried_pipes = None
        return kwargs

    def _torchrl_endpoint_options(self, role: str) -> dict[str, Any]:
        """What the endpoint of ``role`` needs for TorchRL: the sender whether to wait for every
        worker to hold a version (``sync``; by default under a collector); the receiver whether
        to materialise a ``meta`` model, the lock it applies under and whom to tell."""
        if role == "sender":
            wait = self._collector_mode if self.sync is None else self.sync
            return {"adoption_timeout": self.timeout if wait else None}
        receiving = self._receiving
        return {
            "materialize_meta": self.materialize_meta,
            "apply_lock": None if receiving is None else receiving.lock,
            "on_applied": None if receiving is None else self._tell_context,
        }

    def _torchrl_carry_initial_weights(self, model: Any, context: Any) -> None:
        """Under a collector, keep a copy of the model's weights in this scheme's pickled state:
        for a scheme that moves no weights (``none``) but whose workers get a policy without
        any, they are the only weights the workers will have. ``model``: the one given to
        ``init_on_sender``, else the model id resolved on ``context``."""
        if model is None and context is not None:
            model = resolve_model(context, self.model_id)
        if not self._collector_mode or model is None:
            return
        weights = self.strategy.extract_weights(model)
        if isinstance(weights, dict):
            self._initial_weights = {
                k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                for k, v in weights.items()
            }
        else:
            self._initial_weights = weights.detach().clone()

    def _torchrl_after_connect(self) -> None:
        """Mark this side synchronised; under a collector, release the trainer's copies of the
        workers' ends (they are in the workers now), or start the worker's receiving thread."""
        self._synchronized = True
        if not self._collector_mode:
            return
        if self.role == "sender":
            for end in self._carried_pipes or []:
                end.close()
            self._carried_pipes = None
            return
        if self._initial_weights is not None and isinstance(self._model, nn.Module):
            if any(t.is_meta for t in (*self._model.parameters(), *self._model.buffers())):
                self._model.to_empty(device="cpu")
            self.strategy.apply_weights(self._model, self._initial_weights, model_id=self.model_id)
            self._initial_weights = None
        if self._receiving is not None and self._transport.carries_weights:
            self._receiving.start(
                self._receive_loop,
                name=f"weightsync-{self.model_id}-worker{self._worker_idx}",
                join_timeout=self.timeout,
            )

    def _torchrl_shutdown(self) -> None:
        """Stop the worker's receiving thread and forget the collector."""
        if self._receiving is not None:
            self._receiving.close()
        self._collector_mode = False
        self._carried_pipes = None

    # ---------------------------------------------------------------- the receiving thread
    def _receive_loop(self, receiving: _Receiving) -> None:
        """Apply updates as they come (the receiver takes ``receiving.lock`` to apply, so never
        during a rollout), until the scheme shuts down or the trainer goes."""
        receiver = self._receiver
        while not receiving.stop.is_set() and not receiver.closed:
            try:
                receiver.receive(RECEIVE_WAIT_S)
            except (PeerDiedError, EOFError, OSError) as err:
                if not receiving.stop.is_set():
                    log.warning(
                        "weightsync receiving thread of worker %s ends: %s", self._worker_idx, err
                    )
                return
            except Exception:  # a bug must not pass silently, nor kill the worker's collection
                log.exception("weightsync receiving thread of worker %s failed", self._worker_idx)
                return

    def _tell_context(self) -> None:
        """Cascade to the worker's collector as TorchRL's schemes do: its
        ``update_policy_weights_`` copies into the policy it runs and bumps its policy version."""
        update = getattr(self._context, "update_policy_weights_", None)
        if callable(update) and isinstance(self._model, nn.Module):
            update(policy_or_weights=TensorDict.from_module(self._model))


class CollectorWorker:
    """A TorchRL collector's worker process as the transports watch it
    (:class:`~weightsync.transports.ProcessHandle`), with what it reported before it ended: a
    collector worker whose set-up fails (its env factory raises) sends its exception over the
    collector's own pipe and exits."""

    def __init__(self, process: Any, pipe: Any):
        self.process = process
        self.pipe = pipe
        self.pid = process.pid
        self.sentinel = process.sentinel

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def join(self, timeout: float | None = None) -> None:
        self.process.join(timeout)

    def last_words(self) -> str | None:
        """The exception the worker reported on the collector's pipe, if any (read only once
        the worker has ended: nobody else will read it then)."""
        with contextlib.suppress(EOFError, OSError):
            if self.pipe is not None and self.pipe.poll(0):
                said = self.pipe.recv()
                if isinstance(said, dict) and said.get("error"):
                    return (
                        f"{said.get('exception_type')}: {said.get('exception_msg')}\n"
                        f"Worker traceback:\n{said.get('traceback', '')}"
                    )
        return None


class CollectorWorkers(Sequence):
    """A collector's worker processes, by worker index, read when a transport waits: the
    collector sets its scheme up before it starts them, and connects it after."""

    def __init__(self, collector: Any):
        self.collector = collector

    def __len__(self) -> int:
        return len(getattr(self.collector, "procs", None) or [])

    def __getitem__(self, index: int) -> CollectorWorker:
        pipes = getattr(self.collector, "pipes", None) or []
        pipe = pipes[index] if index < len(pipes) else None
        return CollectorWorker(self.collector.procs[index], pipe)


def _guard_rollouts(collector: Any, lock: threading.RLock) -> None:
    """Make the worker collector's ``rollout`` hold ``lock``, so an update is applied between
    two rollouts, never during one."""
    rollout = getattr(collector, "rollout", None)
    if not callable(rollout) or getattr(rollout, "_weightsync_guarded", False):
        return

    @functools.wraps(rollout)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return rollout(*args, **kwargs)

    guarded._weightsync_guarded = True  # type: ignore[attr-defined]
    with contextlib.suppress(AttributeError):  # a collector that refuses: left unguarded
        collector.rollout = guarded
