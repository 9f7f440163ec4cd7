"""The workers as Ray actors (``sync=ray``): the trainer in the driver, one actor per worker.

:class:`RayPool` is the :class:`~experiments.pool.WorkerPool` of a Ray run: the same commands
(request rollouts, gather them, report the weights held) and the same failure policy
(``on_worker_failure``), with each worker a Ray actor placed anywhere in the cluster (spread over
its nodes) and the weights sent by :class:`~weightsync.RayWeightSyncScheme`. Its exit always
leaves nothing behind: each actor lets its scheme go, then is killed; the scheme's board is
killed; a Ray instance the run started is stopped, one it joined (``sync.address=auto``, or the
Ray launcher's) is left running.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from tensordict import TensorDict
from torch import nn

from experiments.checksum import weights_checksum
from experiments.pool import JOIN_TIMEOUT_S, RunStopped, WorkerPool
from experiments.worker import MODEL_ID, Actor, WorkerSpec
from weightsync import WeightSyncScheme

try:
    import ray
except ImportError:  # only sync=ray needs the ray extra; the other options run without it
    ray = None

log = logging.getLogger(__name__)


class RayWorker:
    """One worker as a Ray actor: its :class:`~experiments.worker.Actor`, kept in step with the
    trainer by the ray scheme (whose receiving thread fetches each version while it acts)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.actor = Actor(spec)
        self.scheme: WeightSyncScheme | None = None

    def join(self, scheme: WeightSyncScheme) -> None:
        """Take the scheme set up by the trainer; return once the initial weights are here."""
        self.scheme = scheme
        scheme.init_on_receiver(
            MODEL_ID, model=self.actor.policy, worker_id=self.actor.spec.worker_id
        )
        scheme.connect()

    def collect(self) -> TensorDict:
        self.scheme.receive(0.0)  # act with the newest weights there are
        return self.actor.rollout(self.scheme.get_receiver().version)

    def report(self) -> tuple[int, str]:
        self.scheme.receive(0.0)
        return self.scheme.get_receiver().version, weights_checksum(self.actor.policy)

    def leave(self) -> None:
        if self.scheme is not None:
            self.scheme.shutdown()


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


class RayPool(WorkerPool):
    """``len(specs)`` workers as Ray actors, kept in sync with ``policy`` by a ray ``scheme``.

    Args:
        address: the Ray cluster to join (None: start a local instance; ``"auto"``: the one
            running on this node); ignored when this process is connected to Ray already.
        specs, scheme, policy, timeout, startup_timeout, on_worker_failure: as WorkerPool.
    """

    def __init__(
        self,
        specs: list[WorkerSpec],
        scheme: WeightSyncScheme,
        policy: nn.Module,
        *,
        address: str | None = None,
        **limits: Any,
    ) -> None:
        super().__init__(specs, scheme, policy, **limits)
        self.address = address
        self._session: RaySession | None = None
        self._actors: list[Any] = []
        self._rollouts: dict[int, Any] = {}  # worker -> its rollout on the way

    def _start(self) -> None:
        """Start (or join) Ray, start one actor per worker, then connect the scheme."""
        self._session = RaySession(self.address)
        # num_cpus=0: workers never wait for a CPU slot (a Ray launcher's job holds one);
        # SPREAD: over every node of the cluster.
        worker_cls = ray.remote(RayWorker).options(num_cpus=0, scheduling_strategy="SPREAD")
        self._actors = [worker_cls.remote(spec) for spec in self.specs]
        self.active = [spec.worker_id for spec in self.specs]
        for w in self.active:
            self._get(w, self._actors[w].__ray_ready__.remote(), self.startup_timeout, "start up")
        self.scheme.init_on_sender(MODEL_ID, model=self.policy, actors=self._actors)
        joins = {w: self._actors[w].join.remote(self.scheme) for w in self.active}
        self.scheme.connect()
        for w, joined in joins.items():
            self._get(w, joined, self.timeout, "take the initial weights")

    def request_rollouts(self) -> None:
        for w in self.active:
            self._rollouts[w] = self._actors[w].collect.remote()

    def gather(self) -> list[TensorDict]:
        rollouts = []
        for w in list(self.active):
            try:
                rollouts.append(
                    self._get(w, self._rollouts.pop(w), self.timeout, "deliver a rollout")
                )
            except RunStopped as err:
                self.drop([w], str(err))
        return rollouts

    def report(self) -> dict[int, tuple[int, str]]:
        asked = {w: self._actors[w].report.remote() for w in self.active}
        reports = {}
        for w, answer in asked.items():
            try:
                reports[w] = self._get(w, answer, self.timeout, "report its weights")
            except RunStopped as err:
                self.drop([w], str(err))
        return reports

    def drop_dead(self) -> None:
        """Nothing to do before a send: the send itself names a dead actor at once."""

    def _release(self, workers: list[int]) -> None:
        for w in workers:
            self._rollouts.pop(w, None)
            ray.kill(self._actors[w])

    def _get(self, w: int, ref: Any, timeout: float, doing: str) -> Any:
        """``ray.get(ref)``; RunStopped naming worker ``w``'s actor if it is dead or silent."""
        name = f"worker {w} (Ray actor {self._actors[w]._actor_id.hex()[:12]})"
        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise RunStopped(f"{name} did not {doing} within {timeout:g} s") from None
        except ray.exceptions.RayActorError as err:
            why = str(err).splitlines()[0]
            raise RunStopped(f"{name} died before it could {doing}: {why}") from None

    def close(self) -> None:
        """Let every actor's scheme go, kill the actors, shut the scheme's board down and leave
        Ray (stopping it if this pool started it); safe to call more than once."""
        leaving = [self._actors[w].leave.remote() for w in self.active]
        with contextlib.suppress(Exception):  # a dead actor has nothing left to let go
            ray.get(leaving, timeout=JOIN_TIMEOUT_S)
        self.active = []
        with contextlib.suppress(Exception):  # tearing down must not hide the original error
            self.scheme.shutdown()
        for actor in self._actors:
            ray.kill(actor)
        self._actors, self._rollouts = [], {}
        if self._session is not None:
            self._session.close()
            self._session = None
