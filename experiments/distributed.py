"""The experiment across machines: rank roles under torchrun or Slurm, and rollouts over c10d.

Under a launcher (``torchrun --nproc-per-node=K run.py sync=distributed``, or Slurm through
``hydra/launcher=submitit_slurm``) every process runs ``run.py``; :func:`launch_of` tells them
apart. Rank 0 trains (experiments/train.py, with a :class:`RankPool` as its workers, the
:class:`~experiments.workers.Workers` that a spawned :class:`~experiments.pool.WorkerPool` is too);
every other rank serves as a worker (:func:`serve_rank`): it runs the same actor loop as a
spawned worker (:func:`experiments.actor.run_actor`), over a :class:`RankChannel`.

Commands and rollouts travel over one private two-rank gloo link per worker
(:class:`weightsync.transports.Link`), built from a store of their own on
``MASTER_PORT + ROLLOUT_PORT_OFFSET`` (the scheme's store is on ``MASTER_PORT + 1``; torchrun's own
on ``MASTER_PORT``). A rollout (:class:`~experiments.rollout.Rollout`) is sent as one contiguous
buffer after a JSON description of its tensors (keys, dtypes, shapes) and its weight version: no
pickles.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from experiments.actor import Command, run_actor
from experiments.common.config import ConfigError, plain
from experiments.common.schemes import build_scheme
from experiments.crew import RunStopped
from experiments.factory import actor_spec
from experiments.rollout import Rollout
from experiments.workers import WorkerLost
from weightsync import DistributedWeightSyncScheme, PeerDiedError, WeightSyncScheme
from weightsync.flat import FlatBuffer, FlatLayout
from weightsync.launch import LaunchInfo
from weightsync.transports import (
    Link,
    PendingSends,
    as_bytes,
    decode_layout,
    empty_header,
    encode_layout,
    header,
    open_store,
)
from weightsync.weights import FlatWeights

log = logging.getLogger(__name__)

SCHEME_PORT_OFFSET = 1  # the weight-sync store: MASTER_PORT + 1
ROLLOUT_PORT_OFFSET = 2  # the rollout links' store: MASTER_PORT + 2
#: Schemes that work across processes a launcher started (``none`` moves nothing at all).
LAUNCHABLE = ("weightsync.DistributedWeightSyncScheme", "weightsync.NoWeightSyncScheme")
TO_WORKER, TO_TRAINER = 1, 2  # gloo tags on a rollout link
POLL_S = 0.002  # how often rank 0 looks for the first of several rollouts to arrive


# A rollout link's header starts with a kind: a trainer's experiments.actor.Command (1-3), or
# one of the worker's answers below.
READY = 4  # worker: built, joining the scheme
ROLLOUT = 5  # worker: a rollout follows (description length, payload length)
WEIGHTS = 6  # worker: (version, checksum length), the checksum follows
FAILED = 7  # worker: its env or policy raised; (traceback length), the traceback follows


class TrainerGone(RuntimeError):
    """A worker rank's link to rank 0 broke: nobody is left to work for."""


def launch_of(cfg: DictConfig, environ: dict[str, str] | None = None) -> LaunchInfo | None:
    """This process's launch (None for a plain ``python run.py``), with the config checked
    against it: a scheme that needs one process tree under a multi-process launch, or
    ``sync=distributed`` without a launcher, is a ConfigError before anything starts."""
    info = LaunchInfo.from_environ(environ)
    launched = info is not None and info.world_size > 1
    target = cfg.sync._target_
    if launched and target not in LAUNCHABLE:
        raise ConfigError(
            f"sync={_option(target)} keeps its workers on one machine, in processes the trainer "
            f"spawns, but this is a {info.launcher} launch of {info.world_size} processes on "
            f"{info.num_nodes} node(s): every rank would run its own training. Use "
            "sync=distributed (rank 0 trains, the other ranks are its workers), or run "
            "`python run.py` without a launcher."
        )
    if not launched and target == "weightsync.DistributedWeightSyncScheme":
        raise ConfigError(
            "sync=distributed runs one process per rank, started by a launcher: "
            "`torchrun --nproc-per-node=3 run.py sync=distributed` (rank 0 trains, ranks 1-2 "
            "are workers), or Slurm (see the README). For one machine without a launcher use "
            "sync=shared-mem or sync=pipe."
        )
    if launched:
        _check_sync(cfg.sync)
    return info if launched else None


def _option(target: str) -> str:
    return {"weightsync.MultiProcessWeightSyncScheme": "pipe",
            "weightsync.SharedMemWeightSyncScheme": "shared-mem"}.get(target, target)  # fmt: skip


def _check_sync(sync: DictConfig) -> None:
    if sync.get("port") is not None and not 0 <= sync.port <= 65535:
        raise ConfigError(f"sync.port={sync.port} is not a TCP port: give 0-65535 (0: free).")
    if sync.get("join_timeout") is not None and not sync.join_timeout > 0:
        raise ConfigError(f"sync.join_timeout={sync.join_timeout} is not allowed: it must be > 0.")
    if sync.get("topology") not in (None, "flat", "per_host"):
        raise ConfigError(
            f"sync.topology={sync.topology} is not allowed: flat (one network copy per worker) "
            "or per_host (one per host, shared memory within)."
        )
    for key in ("host", "bind"):
        if sync.get(key) == "":
            raise ConfigError(f"sync.{key} is empty: give an address or leave it unset (null).")


def build_launched_scheme(cfg: DictConfig, info: LaunchInfo) -> WeightSyncScheme:
    """The scheme of ``cfg.sync`` for this rank: the store on the master, ranks as workers."""
    if cfg.sync._target_ != "weightsync.DistributedWeightSyncScheme":
        return build_scheme(cfg)
    sync = plain(cfg.sync)
    scheme = instantiate(
        {**sync, "host": sync["host"] or info.master_addr,
         "port": info.master_port + SCHEME_PORT_OFFSET if sync["port"] is None else sync["port"],
         "join_timeout": sync["join_timeout"] or cfg.run.startup_timeout},
        strategy=instantiate(plain(cfg.strategy)).extract_as, num_workers=info.world_size - 1,
        worker_id=info.worker_id,
    )  # fmt: skip
    assert isinstance(scheme, DistributedWeightSyncScheme)
    return scheme


# --------------------------------------------------------------------------------- rollouts
EPISODE_RETURNS = "episode_returns"  # the one key of a rollout's buffer beside the trajectory's


def encode_rollout(rollout: Rollout) -> tuple[bytes, torch.Tensor]:
    """A rollout as (JSON description, one contiguous byte buffer)."""
    weights = FlatWeights({**rollout.trajectory, EPISODE_RETURNS: rollout.episode_returns})
    buffer = FlatBuffer(FlatLayout.for_weights(weights), shared=False)
    buffer.write(weights)
    meta = {
        "layout": json.loads(encode_layout(buffer.layout, [])),
        "policy_version": rollout.policy_version,
    }
    return json.dumps(meta).encode(), buffer.data


def decode_rollout(meta: bytes, data: torch.Tensor) -> Rollout:
    """The rollout :func:`encode_rollout` described (views into ``data``)."""
    doc = json.loads(meta.decode())
    layout, _ = decode_layout(json.dumps(doc["layout"]).encode())
    views = dict(FlatBuffer(layout, data, shared=False).views())
    episode_returns = views.pop(EPISODE_RETURNS)
    return Rollout(views, episode_returns, doc["policy_version"])


# ------------------------------------------------------------------------------- trainer side
class RankPool:
    """Rank 0's :class:`~experiments.workers.Workers`: the other ranks of the launch, over c10d.

    Worker ``w`` is rank ``w + 1``; it cannot be spawned or killed from here, so a released one
    is only left alone (its link is never used again), and a dead one shows as a broken link or
    a sync error, never through :meth:`exit_reason`.

    Commands leave without waiting for the worker to take them (gloo's send completes only when
    the peer receives): in ``run.mode=async`` a worker may be sending a rollout while the trainer
    asks it for the next one, and two blocking sends facing each other never complete. Each
    command is kept with its tensor until the worker's answer to it shows it arrived.
    """

    def __init__(self, info: LaunchInfo, *, startup_timeout: float, bind: str | None = None):
        self.info = info
        self.num_workers = info.world_size - 1
        self.startup_timeout = startup_timeout
        self.bind = bind
        self.links: dict[int, Link] = {}
        self._headers: dict[int, _Arrival] = {}  # each worker's next header, awaited
        self._commands: dict[int, PendingSends] = defaultdict(PendingSends)  # not yet answered
        self._sent: dict[int, int] = defaultdict(int)  # commands sent to each worker
        self._answered: dict[int, int] = defaultdict(int)  # of those, answered (in order)

    def start(self) -> dict[str, Any]:
        """Join every worker rank's link (all at once: ranks start in any order) and wait for
        each to be READY; the scheme finds the ranks by itself."""
        store = open_store(
            self.info.master_addr, self.info.master_port + ROLLOUT_PORT_OFFSET, is_master=True,
            timeout=self.startup_timeout,
        )  # fmt: skip
        self._store = store

        def join(w: int) -> Link:
            return Link(store, f"experiments/rollouts/{w}", 0, timeout=self.startup_timeout,
                        bind=self.bind)  # fmt: skip

        with ThreadPoolExecutor(self.num_workers) as pool:
            joining = {w: pool.submit(join, w) for w in range(self.num_workers)}
            for w, future in joining.items():
                try:
                    self.links[w] = future.result()
                except RuntimeError as err:
                    raise RunStopped(
                        f"worker {w} (rank {w + 1}) did not join within {self.startup_timeout:g} "
                        f"s: {_first_line(err)}"
                    ) from None
        for w in self.links:
            try:
                kind = self._header(w, self.startup_timeout, "start up")[0]
            except WorkerLost as err:
                raise RunStopped(str(err)) from None
            if kind != READY:
                raise RunStopped(f"worker {w} sent something other than READY on start-up")
            self.links[w].forget_keys()  # both ends are up: the rendezvous keys are done with
        return {}

    def send(self, worker: int, command: Command) -> None:
        message = header(command)
        try:
            work = self.links[worker].send(message, TO_WORKER)
        except RuntimeError as err:
            why = f"cannot be reached ({_first_line(err)})"
            raise WorkerLost(worker, f"worker {worker} (rank {worker + 1}) {why}") from None
        self._sent[worker] += 1
        self._commands[worker].add(work, message, ("command", self._sent[worker]))

    def wait_any(self, workers: list[int], timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            arrived = [w for w in workers if self._arrived(w)]
            if arrived or time.monotonic() >= deadline:
                return arrived
            time.sleep(POLL_S)

    def receive_rollout(self, worker: int, timeout: float) -> Rollout:
        _, meta_len, nbytes, _ = self._header(worker, timeout, "deliver a rollout")
        meta = torch.empty(meta_len, dtype=torch.uint8)
        data = torch.empty(nbytes, dtype=torch.uint8)
        self._recv(worker, meta, timeout, "deliver a rollout")
        self._recv(worker, data, timeout, "deliver a rollout")
        self._got_answer(worker)
        return decode_rollout(bytes(meta.numpy()), data)

    def receive_report(self, worker: int, timeout: float) -> tuple[int, str]:
        _, version, length, _ = self._header(worker, timeout, "report its weights")
        digest = torch.empty(length, dtype=torch.uint8)
        self._recv(worker, digest, timeout, "report its weights")
        self._got_answer(worker)
        return version, bytes(digest.numpy()).decode()

    def exit_reason(self, worker: int) -> str | None:
        return None  # a rank on another machine cannot be watched from here

    def release(self, worker: int) -> None:
        self.links.pop(worker, None)  # never used again (a closed gloo pair cannot be reused)

    def close(self) -> None:
        """Nothing to end: every rank's process exits by itself once told STOP or once rank 0's
        process (and with it every link) is gone."""

    def _arrived(self, w: int) -> bool:
        """Whether worker ``w``'s next header is here (or its link broke: the receive that
        follows names the worker)."""
        return self._posted_header(w).done.is_set()

    def _posted_header(self, w: int) -> _Arrival:
        """The receive of worker ``w``'s next header, posted now if it is not yet."""
        if w not in self._headers:
            self._headers[w] = _Arrival(self.links[w])
        return self._headers[w]

    def _got_answer(self, w: int) -> None:
        """Worker ``w`` answered its oldest unanswered command: that one and every command
        before it have arrived, and their sends are collected."""
        self._answered[w] += 1
        self._commands[w].settle(("command", self._answered[w]))

    def _header(self, w: int, timeout: float, doing: str) -> list[int]:
        arrival = self._posted_header(w)
        if not arrival.done.wait(timeout):  # still posted: a later call goes on waiting for it
            raise WorkerLost(w, f"worker {w} (rank {w + 1}) did not {doing} within {timeout:g} s")
        del self._headers[w]  # taken: the next header needs a receive of its own
        if arrival.error is not None:
            raise WorkerLost(w, f"worker {w} (rank {w + 1}) is gone: it did not {doing} "
                                f"({_first_line(arrival.error)})")  # fmt: skip
        found = arrival.header.tolist()
        if found[0] == FAILED:  # in place of the answer: why the worker stopped
            trace = torch.empty(found[1], dtype=torch.uint8)
            self._recv(w, trace, timeout, "send its traceback")
            why = bytes(trace.numpy()).decode(errors="replace").rstrip()
            raise WorkerLost(w, f"worker {w} (rank {w + 1}) failed:\n{why}")
        return found

    def _recv(self, w: int, tensor: torch.Tensor, timeout: float, doing: str) -> None:
        post = self.links[w].group.recv
        self._receive(w, lambda: (post([tensor], 1, TO_TRAINER), tensor), timeout, doing)

    def _receive(self, w: int, posted: Callable[[], tuple[Any, torch.Tensor]], timeout: float,
                 doing: str) -> torch.Tensor:  # fmt: skip
        """The tensor of the receive ``posted()`` returns, once it is complete; WorkerLost if
        it fails or ``timeout`` s pass."""
        try:
            work, tensor = posted()
            work.wait(datetime.timedelta(seconds=timeout))
            return tensor
        except RuntimeError as err:
            why = "did not" if "Timed out" in str(err) else "is gone: it did not"
            raise WorkerLost(w, f"worker {w} (rank {w + 1}) {why} {doing} within {timeout:g} s "
                                f"({_first_line(err)})") from None  # fmt: skip


class _Arrival:
    """The receive of a worker's next header, waited for on a thread of its own, so that whether
    it arrived can be asked without blocking: gloo's ``is_completed()`` of a receive stays False
    until someone's ``wait()`` returns, and a second ``wait()`` of the same receive would wait
    for a message that is not coming."""

    def __init__(self, link: Link) -> None:
        self.header = empty_header()
        self.done = threading.Event()
        self.error: RuntimeError | None = None
        threading.Thread(target=self._receive, args=(link,), name="header", daemon=True).start()

    def _receive(self, link: Link) -> None:
        try:
            link.recv(self.header, TO_TRAINER)
        except RuntimeError as err:  # the link broke: the worker is gone
            self.error = err
        finally:
            self.done.set()


# -------------------------------------------------------------------------------- worker side
class RankChannel:
    """A worker rank's :class:`~experiments.actor.Channel`: its c10d link to rank 0. A command
    is awaited without a limit (an idle link is not a dead one; the scheme's receiving thread
    keeps the weights current meanwhile)."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def ready(self) -> None:
        self._send(header(READY))

    def next_command(self, timeout: float) -> Command | None:
        msg = empty_header()
        try:
            self.link.recv(msg, TO_WORKER)
        except RuntimeError as err:
            raise TrainerGone(_first_line(err)) from err
        return Command(msg[0].item())

    def send_rollout(self, rollout: Rollout) -> None:
        meta, data = encode_rollout(rollout)
        self._send(header(ROLLOUT, len(meta), data.numel()), as_bytes(meta), data)

    def send_report(self, version: int, digest: str) -> None:
        self._send(header(WEIGHTS, version, len(digest)), as_bytes(digest))

    def send_failure(self, trace: str) -> None:
        """``FAILED`` and ``trace`` in place of the answer rank 0 awaits (a link that broke
        meanwhile is ignored: nobody is left to tell)."""
        text = trace.encode()
        with contextlib.suppress(TrainerGone):
            self._send(header(FAILED, len(text)), as_bytes(text))

    def _send(self, *tensors: torch.Tensor) -> None:
        try:
            for work in [self.link.send(t, TO_TRAINER) for t in tensors]:
                work.wait()
        except RuntimeError as err:
            raise TrainerGone(_first_line(err)) from err


def serve_rank(cfg: DictConfig, info: LaunchInfo) -> None:
    """A worker rank: the actor loop over its link until told to stop or rank 0 is gone (then it
    exits at once: its link breaks when rank 0's process ends)."""
    w = info.worker_id
    scheme = build_launched_scheme(cfg, info)
    store = open_store(info.master_addr, info.master_port + ROLLOUT_PORT_OFFSET, is_master=False,
                       timeout=cfg.run.startup_timeout)  # fmt: skip
    link = Link(store, f"experiments/rollouts/{w}", 1, timeout=cfg.run.startup_timeout,
                bind=OmegaConf.select(cfg, "sync.bind"))  # fmt: skip
    channel = RankChannel(link)
    try:
        run_actor(actor_spec(cfg), w, scheme, channel, {"worker_id": w})
    except (TrainerGone, PeerDiedError) as err:  # rank 0 is gone: nobody is left to work for
        log.warning("worker %d: the trainer is gone (%s); exiting", w, _first_line(err))
    except Exception:
        # Its env or policy raised: rank 0 learns why, in place of the answer it awaits.
        channel.send_failure(traceback.format_exc())
        raise
    finally:
        scheme.shutdown()


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
