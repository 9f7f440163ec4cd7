"""Workers as Ray actors (``sync=ray``): :class:`RayPool`, the :class:`~experiments.workers.Workers`
of a Ray run, and the actor's end of its command queue.

Each worker is a Ray actor placed anywhere in the cluster (spread over its nodes) that runs the
one actor loop, :func:`experiments.actor.run_actor`, in :meth:`RayWorker.serve`, over a
:class:`QueueChannel`: the trainer puts commands in through :meth:`RayWorker.command` and takes
answers out through :meth:`RayWorker.answer` (the actor is threaded, so these run while
``serve`` does). The weights come through :class:`~weightsync.RayWeightSyncScheme`, whose
receiver finds the trainer's board by name once the trainer has set it up.

A worker whose loop ended (its env or policy raised, or the trainer's scheme is gone) is seen
through its ``serve`` call, whose error carries the traceback; a dead actor through Ray's
``RayActorError``. The pool's :meth:`~RayPool.close` always leaves nothing behind: every actor is
killed, and a Ray instance the run started is stopped, one it joined (``sync.address=auto``, or
the Ray launcher's) is left running.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from typing import Any

from experiments.actor import ActorSpec, Command, run_actor
from experiments.crew import RunStopped
from experiments.pool import JOIN_TIMEOUT_S, READY
from experiments.rollout import Rollout
from experiments.workers import WorkerLost
from weightsync import PeerDiedError, WeightSyncScheme

try:
    import ray
except ImportError:  # only sync=ray needs the ray extra; the other options run without it
    ray = None

log = logging.getLogger(__name__)

#: Threads of each worker actor: ``serve`` (the actor loop), ``command`` and ``answer``.
ACTOR_THREADS = 3
#: How long one ``answer`` call waits in the actor before it returns None (and is asked again).
ANSWER_WAIT_S = 1.0


# --------------------------------------------------------------------------------- worker side
class QueueChannel:
    """A Ray worker's :class:`~experiments.actor.Channel`: commands in, answers out, each a
    queue that the trainer's calls on the actor feed and drain."""

    def __init__(self) -> None:
        self.commands: queue.Queue[Command] = queue.Queue()
        self.answers: queue.Queue[Any] = queue.Queue()

    def ready(self) -> None:
        self.answers.put(READY)

    def next_command(self, timeout: float) -> Command | None:
        try:
            return Command(self.commands.get(timeout=timeout))
        except queue.Empty:
            return None

    def send_rollout(self, rollout: Rollout) -> None:
        self.answers.put(rollout)

    def send_report(self, version: int, digest: str) -> None:
        self.answers.put((version, digest))


class RayWorker:
    """One worker as a (threaded) Ray actor: :meth:`serve` runs the actor loop; the trainer
    talks to it through :meth:`command` and :meth:`answer`."""

    def __init__(self) -> None:
        self.channel = QueueChannel()

    def serve(self, spec: ActorSpec, worker_id: int, scheme: WeightSyncScheme) -> None:
        """The actor loop until told to stop or until the trainer's scheme is gone."""
        try:
            run_actor(spec, worker_id, scheme, self.channel, {"worker_id": worker_id})
        except PeerDiedError:
            pass  # the trainer is gone: there is nobody left to work for
        finally:
            scheme.shutdown()

    def command(self, command: int) -> None:
        self.channel.commands.put(command)

    def answer(self, timeout: float) -> Any:
        """The next answer of the actor loop, or None if none came within ``timeout`` s."""
        try:
            return self.channel.answers.get(timeout=timeout)
        except queue.Empty:
            return None


class RaySession:
    """This process's connection to Ray: a new local instance (``address=None``), or the
    cluster at ``address`` (``"auto"``: the one running on this node). Already connected (a Ray
    launcher's job, a user's own ``ray.init``): that connection, left as it is at the end."""

    def __init__(self, address: str | None) -> None:
        if ray is None:
            raise ImportError("sync=ray runs on Ray: pip install -e '.[ray]'")
        self.owned = not ray.is_initialized()
        if self.owned:
            local = {"_node_ip_address": "127.0.0.1"} if address is None else {}  # this host only
            ray.init(
                address=address or "local",
                include_dashboard=False,
                logging_level="WARNING",
                **local,
            )
            log.info("Ray: %s", "a new local instance" if address is None else f"joined {address}")

    def close(self) -> None:
        """Leave Ray: stops an instance this session started; only disconnects from a joined
        one."""
        if self.owned and ray.is_initialized():
            ray.shutdown()


# -------------------------------------------------------------------------------- trainer side
class RayPool:
    """``num_workers`` Ray actors, each acting as ``spec`` says; ``scheme`` (a ray scheme, not
    yet initialised) is handed to every one of them.

    Args:
        spec: what each worker builds.
        num_workers: how many actors to start.
        scheme: the weight-sync scheme (the trainer initialises its own copy).
        startup_timeout: seconds for all actors to start (a process importing torch, per actor)
            and build their models.
        address: the Ray cluster to join (None: start a local instance; ``"auto"``: the one
            running on this node); ignored when this process is connected to Ray already.
    """

    def __init__(
        self, spec: ActorSpec, num_workers: int, scheme: WeightSyncScheme, *,
        startup_timeout: float, address: str | None = None,
    ) -> None:  # fmt: skip
        self.spec = spec
        self.num_workers = num_workers
        self.scheme = scheme
        self.startup_timeout = startup_timeout
        self.address = address
        self._session: RaySession | None = None
        self._actors: list[Any] = []
        self._serving: list[Any] = []  # each actor's serve() call, done once its loop ended
        self._asking: dict[int, Any] = {}  # worker -> its answer() call in progress

    def start(self) -> dict[str, Any]:
        """Start (or join) Ray and one actor per worker; wait until each is built. The scheme
        reaches them as Ray actors (and names them in its errors)."""
        self._session = RaySession(self.address)
        # num_cpus=0: workers never wait for a CPU slot (a Ray launcher's job holds one);
        # SPREAD: over every node of the cluster.
        worker_cls = ray.remote(RayWorker).options(
            num_cpus=0, scheduling_strategy="SPREAD", max_concurrency=ACTOR_THREADS
        )
        self._actors = [worker_cls.remote() for _ in range(self.num_workers)]
        # Every actor's process first (seconds each on a loaded node), so that none waits for
        # its initial weights while another is still starting.
        for w, actor in enumerate(self._actors):
            self._started(w, actor.__ray_ready__.remote())
        self._serving = [
            a.serve.remote(self.spec, w, self.scheme) for w, a in enumerate(self._actors)
        ]
        for w in range(self.num_workers):
            try:
                answer = self._answer(w, self.startup_timeout, "start up")
            except WorkerLost as err:
                raise RunStopped(str(err)) from None
            if answer != READY:
                raise RunStopped(f"worker {w} sent something other than {READY!r} on start-up")
        return {"actors": self._actors}

    def send(self, worker: int, command: Command) -> None:
        self._actors[worker].command.remote(int(command))  # a dead actor shows at the answer

    def wait_any(self, workers: list[int], timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            calls = {self._asked(w): w for w in workers}
            calls.update({self._serving[w]: w for w in workers})
            left = max(0.0, deadline - time.monotonic())
            if ray.wait(list(calls), num_returns=1, timeout=left)[0]:
                ready = ray.wait(list(calls), num_returns=len(calls), timeout=0)[0]
                arrived = {calls[ref] for ref in ready if self._has_news(calls[ref], ref)}
                if arrived:
                    return sorted(arrived)
            if time.monotonic() >= deadline:
                return []

    def receive_rollout(self, worker: int, timeout: float) -> Rollout:
        return self._answer(worker, timeout, "deliver a rollout")

    def receive_report(self, worker: int, timeout: float) -> tuple[int, str]:
        return self._answer(worker, timeout, "report its weights")

    def exit_reason(self, worker: int) -> str | None:
        serving = self._serving[worker]
        if not ray.wait([serving], timeout=0)[0]:
            return None
        return self._ended(worker, serving, "between rollouts")

    def release(self, worker: int) -> None:
        """Kill the worker's actor."""
        self._asking.pop(worker, None)
        ray.kill(self._actors[worker])

    def close(self) -> None:
        """Wait a moment for the actor loops told to stop, kill every actor and leave Ray
        (stopping it if this pool started it); safe to call more than once."""
        with contextlib.suppress(Exception):  # an actor that died has nothing to wait for
            ray.wait(self._serving, num_returns=len(self._serving), timeout=JOIN_TIMEOUT_S)
        for actor in self._actors:
            ray.kill(actor)
        self._actors, self._serving, self._asking = [], [], {}
        if self._session is not None:
            self._session.close()
            self._session = None

    # ------------------------------------------------------------------------------ internals
    def _name(self, w: int) -> str:
        return f"worker {w} (Ray actor {self._actors[w]._actor_id.hex()[:12]})"

    def _started(self, w: int, ready: Any) -> None:
        """Wait for worker ``w``'s actor process; RunStopped if it does not come up."""
        try:
            ray.get(ready, timeout=self.startup_timeout)
        except ray.exceptions.GetTimeoutError:
            raise RunStopped(
                f"{self._name(w)} did not start within {self.startup_timeout:g} s"
            ) from None
        except ray.exceptions.RayActorError as err:
            raise RunStopped(f"{self._name(w)} died on start-up: {_first_line(err)}") from None

    def _asked(self, w: int) -> Any:
        """Worker ``w``'s ``answer()`` call in progress, made now if there is none."""
        if w not in self._asking:
            self._asking[w] = self._actors[w].answer.remote(ANSWER_WAIT_S)
        return self._asking[w]

    def _has_news(self, w: int, ready: Any) -> bool:
        """Whether ``ready`` (worker ``w``'s finished answer or serve call) means something to
        receive: an answer, or a loop that ended; an empty answer is forgotten (asked again)."""
        if ready == self._serving[w]:
            return True
        try:
            if ray.get(ready) is None:
                del self._asking[w]
                return False
        except ray.exceptions.RayActorError:
            pass  # the receive that follows names the dead actor
        return True

    def _answer(self, w: int, timeout: float, doing: str) -> Any:
        """Worker ``w``'s next answer; WorkerLost if its loop ended, its actor died or it was
        silent for ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            asked, serving = self._asked(w), self._serving[w]
            left = max(0.0, deadline - time.monotonic())
            ready = ray.wait([asked, serving], num_returns=1, timeout=left)[0]
            if asked in ready:
                del self._asking[w]
                try:
                    answer = ray.get(asked)
                except ray.exceptions.RayActorError as err:
                    raise WorkerLost(w, f"{self._name(w)} died before it could {doing}: "
                                     f"{_first_line(err)}") from None  # fmt: skip
                if answer is not None:
                    return answer
            elif serving in ready:
                raise WorkerLost(w, self._ended(w, serving, f"before it could {doing}"))
            if time.monotonic() >= deadline:
                raise WorkerLost(w, f"{self._name(w)} did not {doing} within {timeout:g} s")

    def _ended(self, w: int, serving: Any, when: str) -> str:
        """Why worker ``w``'s actor loop (its finished ``serve`` call) ended, ``when``."""
        try:
            ray.get(serving)
        except ray.exceptions.RayActorError as err:
            return f"{self._name(w)} died {when}: {_first_line(err)}"
        except ray.exceptions.RayTaskError as err:  # its env or policy raised: the traceback
            return f"{self._name(w)} failed {when}:\n{str(err).rstrip()}"
        return f"{self._name(w)} stopped serving {when} (its scheme was shut down)"


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__
