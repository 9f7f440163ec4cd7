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

All of it stands beside the core, through the core's public seams: the keywords TorchRL passes
(``ctx=``, ``params_map=``, ``worker_idx=``) are taken by adapters registered with
:meth:`WeightSyncScheme.accept_keywords`; ``ctx=`` sets a :class:`CollectorSession` as the
scheme's ``session`` (pickled to the workers with it), which the scheme tells of each lifecycle
step; TorchRL's properties (``initialized_on_sender``, ``synchronized_on_receiver``,
``worker_idx``, ...) are added to the scheme class by :func:`~weightsync.extend.add_calls`. A
scheme no collector drives has no session and runs none of this.
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
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from weightsync import lifetime
from weightsync.errors import PeerDiedError
from weightsync.extend import add_calls
from weightsync.schemes import WeightSyncScheme
from weightsync.schemes.base import Role

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
    if not issubclass(WeightSyncScheme, TorchRLScheme):
        TorchRLScheme.register(WeightSyncScheme)  # and so every weightsync scheme


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


class CollectorSession:
    """What a TorchRL collector adds to a scheme it drives; the scheme's ``session`` from the
    collector's ``init_on_sender(ctx=...)`` on (see the module docstring).

    Pickled with the scheme: the workers' ends of the channels (each worker takes its own), the
    initial weights of a scheme that moves none (``none``: the collector sends its workers a
    policy without weights). Runtime, in a worker: its index, and its receiving thread with the
    lock the collector's rollouts hold too.
    """

    def __init__(self, carried_pipes: list) -> None:
        self.carried_pipes: list | None = carried_pipes
        self.initial_weights: Any = None
        self.worker_idx: int | None = None
        self._receiving: _Receiving | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_receiving": None}

    # ------------------------------------------------------------- SchemeSession protocol
    def endpoint_options(self, scheme: WeightSyncScheme, role: Role) -> dict[str, Any]:
        """The sender waits until every worker holds a version (unless the scheme's ``sync``
        says otherwise); the receiver materialises the collector's ``meta`` policy, applies
        under the rollouts' lock and tells the worker's collector after each update."""
        if role == "sender":
            return {} if scheme.sync is not None else {"adoption_timeout": scheme.timeout}
        if self._receiving is None:
            self._receiving = _Receiving()
        # The collector is told of each update with a TensorDict: tensordict is imported now,
        # not by the first update's receiving thread (seconds between applying and telling).
        from tensordict import TensorDict

        return {
            "materialize_meta": True,
            "apply_lock": self._receiving.lock,
            "on_applied": lambda: _tell_context(scheme, TensorDict),
        }

    def initialised(self, scheme: WeightSyncScheme) -> None:
        """On the trainer of a scheme that moves no weights, keep a copy of the model's to
        carry to the workers."""
        if scheme.role != "sender" or scheme.get_sender().transport.carries_weights:
            return
        if scheme.model is None:
            return
        weights = scheme.strategy.extract_weights(scheme.model)
        if isinstance(weights, dict):
            self.initial_weights = {
                k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                for k, v in weights.items()
            }
        else:
            self.initial_weights = weights.detach().clone()

    def connected(self, scheme: WeightSyncScheme) -> None:
        """Trainer: release its copies of the workers' ends (they are in the workers now).
        Worker: apply carried initial weights, then start the receiving thread."""
        if scheme.role == "sender":
            for end in self.carried_pipes or []:
                end.close()
            self.carried_pipes = None
            return
        model = scheme.model
        if self.initial_weights is not None and isinstance(model, nn.Module):
            if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
                model.to_empty(device="cpu")
            scheme.strategy.apply_weights(model, self.initial_weights, model_id=scheme.model_id)
            self.initial_weights = None
        receiver = scheme.get_receiver()
        if self._receiving is not None and receiver.transport.carries_weights:
            self._receiving.start(
                lambda receiving: _receive_loop(receiver, receiving, self.worker_idx),
                name=f"weightsync-{scheme.model_id}-worker{self.worker_idx}",
                join_timeout=scheme.timeout,
            )

    def context_changed(self, scheme: WeightSyncScheme) -> None:
        """A worker's collector (TorchRL sets it after init): its rollouts take the lock."""
        if self._receiving is not None:
            _guard_rollouts(scheme.context, self._receiving.lock)

    def close(self, scheme: WeightSyncScheme) -> None:
        """Stop the worker's receiving thread."""
        if self._receiving is not None:
            self._receiving.close()
        self.carried_pipes = None


# --------------------------------------------------------------------- TorchRL's keywords
def _sender_keywords(
    scheme: WeightSyncScheme, model_id: str, context: Any, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``params_map=`` (``{worker_idx: weights}``) gives the initial weights and the number of
    workers, as ``weights=`` and ``devices=`` (one per worker) do; ``device_map_fn=`` is
    accepted and unused (each worker's update lands on its own model's device). ``ctx=`` (a
    multiprocessing context) means a collector is initialising the scheme: one pipe per worker,
    the worker ends carried in the scheme's pickled session."""
    params_map = kwargs.pop("params_map", None)
    if params_map:
        kwargs.setdefault("num_workers", len(params_map))
        kwargs.setdefault("model", next(iter(params_map.values())))
    if kwargs.get("weights") is not None:
        kwargs.setdefault("model", kwargs["weights"])
    if kwargs.get("devices") is not None:
        kwargs.setdefault("num_workers", len(kwargs["devices"]))
    for unused in ("weights", "devices", "device_map_fn"):
        kwargs.pop(unused, None)
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
    scheme.session = CollectorSession([worker_end for _, worker_end in pairs])
    if "torchrl" in sys.modules:
        register_with_torchrl()
    return kwargs


def _receiver_keywords(
    scheme: WeightSyncScheme, model_id: str, context: Any, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``worker_idx=i`` without a pipe, under a collector: take worker ``i``'s end of the
    carried channels (and close the others', so a worker's death reaches the trainer as end of
    file)."""
    session = scheme.session
    worker_idx = kwargs.pop("worker_idx", None)
    if not isinstance(session, CollectorSession):
        if worker_idx is not None:
            _WORKER_IDX[scheme] = worker_idx
        return kwargs
    if worker_idx is not None:
        session.worker_idx = worker_idx
    carried = session.carried_pipes
    if not carried or "pipe" in kwargs or getattr(context, "pipe", None) is not None:
        return kwargs
    worker_idx = session.worker_idx
    if worker_idx is None or not 0 <= worker_idx < len(carried):
        raise ValueError(
            f"{type(scheme).__name__} was set up by a collector for {len(carried)} workers; "
            f"init_on_receiver needs worker_idx in [0, {len(carried)}), got {worker_idx!r}"
        )
    for i, end in enumerate(carried):
        if i != worker_idx:
            end.close()
    kwargs["pipe"] = carried[worker_idx]
    session.carried_pipes = None
    return kwargs


#: ``worker_idx`` given to schemes no collector drives (TorchRL's property still reads it).
_WORKER_IDX: weakref.WeakKeyDictionary[WeightSyncScheme, int] = weakref.WeakKeyDictionary()

WeightSyncScheme.accept_keywords(
    "sender", ("ctx", "params_map", "weights", "devices", "device_map_fn"), _sender_keywords
)
WeightSyncScheme.accept_keywords("receiver", ("worker_idx",), _receiver_keywords)
for _alias, _backend in BACKEND_ALIASES.items():
    WeightSyncScheme.add_alias(_alias, _backend)


# --------------------------------------------------------------------- TorchRL's properties
def _set_connected(scheme: WeightSyncScheme, value: bool) -> None:
    scheme.connected = bool(value)


@add_calls(WeightSyncScheme)
class TorchRLSchemeProperties:
    """What TorchRL's collectors read on a scheme, from the scheme's public state."""

    initialized_on_sender = property(lambda self: self.role == "sender")
    initialized_on_receiver = property(lambda self: self.role == "receiver")
    synchronized_on_sender = property(
        lambda self: self.role == "sender" and self.connected, _set_connected
    )
    synchronized_on_receiver = property(
        lambda self: self.role == "receiver" and self.connected, _set_connected
    )

    @property
    def worker_idx(self) -> int | None:
        """The worker index given to ``init_on_receiver`` (None elsewhere)."""
        if isinstance(self.session, CollectorSession):
            return self.session.worker_idx
        return _WORKER_IDX.get(self)

    @property
    def strategy_str(self) -> str:
        """The weight format's name, ``"state_dict"`` or ``"tensordict"``."""
        return self.strategy.extract_as


# ------------------------------------------------------------------- the receiving thread
def _receive_loop(receiver: Any, receiving: _Receiving, worker_idx: int | None) -> None:
    """Apply updates as they come (the receiver takes ``receiving.lock`` to apply, so never
    during a rollout), until the scheme shuts down or the trainer goes."""
    while not receiving.stop.is_set() and not receiver.closed:
        try:
            receiver.receive(RECEIVE_WAIT_S)
        except (PeerDiedError, EOFError, OSError) as err:
            if not receiving.stop.is_set():
                log.warning("weightsync receiving thread of worker %s ends: %s", worker_idx, err)
            return
        except Exception:  # a bug must not pass silently, nor kill the worker's collection
            log.exception("weightsync receiving thread of worker %s failed", worker_idx)
            return


def _tell_context(scheme: WeightSyncScheme, tensordict_class: type) -> None:
    """Cascade to the worker's collector as TorchRL's schemes do: its
    ``update_policy_weights_`` copies into the policy it runs and bumps its policy version."""
    update = getattr(scheme.context, "update_policy_weights_", None)
    if callable(update) and isinstance(scheme.model, nn.Module):
        update(policy_or_weights=tensordict_class.from_module(scheme.model))


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
