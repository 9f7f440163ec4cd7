"""The actor: the one loop every worker runs, however it was launched.

A worker owns a copy of the policy on the worker device and a batched environment. It talks to
the trainer through a :class:`Channel` (a pipe pair for a spawned worker, a c10d link for a
torchrun/Slurm rank: ``experiments/pool.py`` and ``experiments/distributed.py``) and receives
weights through the weight-sync scheme. The trainer sends :class:`Command` s:

* ``COLLECT`` -> one :class:`~experiments.rollout.Rollout`, tagged with the weight version that
  produced it;
* ``REPORT`` -> ``(version, checksum)`` of the weights it holds;
* ``STOP`` -> exit.

Between commands the worker keeps calling ``scheme.receive()`` so that new weights are applied
(and, for the pipe scheme, acknowledged) while it is idle, and once more right before each
command, so that it acts with the newest version it can have. A channel's sends must not block
the loop on a busy trainer (learning, or waiting for this very worker's acknowledgement of new
weights): the pipe channel sends from a thread of its own, a rank's scheme applies weights on
its receiving thread, a Ray worker's answers go into a queue. How many rollouts a worker
collects ahead is the trainer's choice: one ``COLLECT`` per rollout (``run.mode=async`` keeps two
asked for, so a worker never waits). It never modifies its policy's parameters, which for
``shared-mem`` are views of a read-only snapshot.

The environment and the policy come from factories (:class:`ActorSpec`): any env whose
``make_env(device=..., seed=...)`` gives an object with ``obs``, ``step`` and
``pop_finished_returns``, and any policy with ``act`` (see ``experiments/rollout.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from experiments.checksum import weights_checksum
from experiments.rollout import Rollout, collect_rollout
from weightsync import WeightSyncScheme

MODEL_ID = "policy"
IDLE_WAKEUP_S = 0.05  # an idle worker checks for new weights at least this often


class Command(enum.IntEnum):
    """What the trainer asks of a worker (an int, so that it also fits a c10d header)."""

    COLLECT = 1
    REPORT = 2
    STOP = 3


@dataclass
class ActorSpec:
    """Everything a worker needs to build its copy of the world (pickled to a spawned process;
    ``experiments.factory.actor_spec`` makes one from the run's config)."""

    make_env: Callable[..., Any]
    make_policy: Callable[[], nn.Module]
    rollout_steps: int
    device: str
    seed: int
    torch_threads: int


class Channel(Protocol):
    """A worker's end of its command link to the trainer."""

    def ready(self) -> None:
        """Tell the trainer this worker is built and about to join the scheme."""

    def next_command(self, timeout: float) -> Command | None:
        """The next command, or None if none came within ``timeout`` s (a channel that cannot
        wait with a limit may block until one comes)."""

    def send_rollout(self, rollout: Rollout) -> None:
        """Ship one rollout to the trainer."""

    def send_report(self, version: int, digest: str) -> None:
        """Answer ``REPORT``: the weight version held and its :func:`weights_checksum`."""


def run_actor(
    spec: ActorSpec,
    worker_id: int,
    scheme: WeightSyncScheme,
    channel: Channel,
    endpoints: dict[str, Any],
) -> None:
    """Serve the trainer until told to stop or the scheme is shut down.

    ``endpoints`` go to ``scheme.init_on_receiver`` (a spawned worker's weight pipe, a rank's
    worker id). A trainer that is gone surfaces as the channel's or the scheme's error;
    the launcher's entry point decides which of those mean "nobody is left to work for".
    """
    torch.set_num_threads(spec.torch_threads)
    device = torch.device(spec.device)
    torch.manual_seed(spec.seed)  # the trainer seeds the same way: same initial weights
    policy = spec.make_policy().to(device)
    env_seed = spec.seed + 1 + worker_id
    env = spec.make_env(device=device, seed=env_seed)
    sampler = torch.Generator(device).manual_seed(env_seed)

    scheme.init_on_receiver(MODEL_ID, model=policy, **endpoints)
    channel.ready()
    scheme.connect()
    receiver = scheme.get_receiver()

    while not scheme.closed:
        command = channel.next_command(IDLE_WAKEUP_S)
        scheme.receive(0.0)  # idle: apply (and acknowledge) new weights; busy: act with them
        if command is None:
            continue
        if command == Command.STOP:
            return
        if command == Command.COLLECT:
            version = receiver.version
            trajectory = collect_rollout(env, policy, spec.rollout_steps, generator=sampler)
            rollout = Rollout(trajectory, env.pop_finished_returns(), version)
            channel.send_rollout(rollout.to("cpu"))
        elif command == Command.REPORT:
            channel.send_report(receiver.version, weights_checksum(policy))
        else:
            raise ValueError(f"worker {worker_id} got an unknown command {command!r}")
