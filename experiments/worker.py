"""The actor: a spawned process that acts with its copy of the policy and ships trajectories.

Each worker owns a policy on the worker device and a batched environment, and talks to the
trainer over two pipes:

* the **weight pipe** belongs to the weight-sync scheme (``init_on_receiver(..., pipe=...)``);
* the **data pipe** carries the trainer's commands and the worker's answers:
  ``COLLECT`` → one rollout as a TensorDict tagged with the policy version that produced it,
  ``REPORT`` → ``(version, checksum)`` of the weights it holds, ``STOP`` → exit.

Between commands the worker keeps calling ``scheme.receive()`` so that new weights are applied
(and, for the pipe scheme, acknowledged) while it is idle, and once more right before each
rollout, so that it acts with the newest version it can have.

The worker exits on ``STOP``, when the scheme is shut down, and when the trainer is gone: end of
file on either pipe (``EOFError``, ``PeerDiedError``) or a broken pipe when it sends. It never
modifies its policy's parameters, which for ``shared-mem`` are views of a read-only snapshot.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import torch
from tensordict import TensorDict
from torch import nn

from experiments.checksum import weights_checksum
from experiments.rollout import collect_rollout
from weightsync import PeerDiedError, WeightSyncScheme

READY, COLLECT, REPORT, STOP = "ready", "collect", "report", "stop"
MODEL_ID = "policy"
IDLE_WAKEUP_S = 0.05  # an idle worker checks for new weights at least this often


@dataclass
class WorkerSpec:
    """Everything a worker needs to build its copy of the world (pickled to the process)."""

    worker_id: int
    make_env: Callable[..., Any]
    make_policy: Callable[[], nn.Module]
    rollout_steps: int
    device: str
    seed: int
    torch_threads: int


def run_worker(
    spec: WorkerSpec, scheme: WeightSyncScheme, weight_pipe: Connection, data_pipe: Connection
) -> None:
    """Process entry point: serve the trainer until told to stop or until it is gone."""
    try:
        _serve(spec, scheme, weight_pipe, data_pipe)
    except (EOFError, BrokenPipeError, ConnectionResetError, PeerDiedError):
        pass  # the trainer is gone: there is nobody left to work for
    finally:
        scheme.shutdown()
        data_pipe.close()


class Actor:
    """A worker's world, built from its spec: its policy, its batched environment and its
    action sampler; :meth:`rollout` collects one rollout as the message the trainer expects."""

    def __init__(self, spec: WorkerSpec) -> None:
        torch.set_num_threads(spec.torch_threads)
        device = torch.device(spec.device)
        torch.manual_seed(spec.seed)  # the trainer seeds the same way: same initial weights
        self.spec = spec
        self.policy = spec.make_policy().to(device)
        env_seed = spec.seed + 1 + spec.worker_id
        self.env = spec.make_env(device=device, seed=env_seed)
        self.sampler = torch.Generator(device).manual_seed(env_seed)

    def rollout(self, version: int) -> TensorDict:
        """One rollout with the policy as it is, tagged with its weight ``version``, on CPU."""
        trajectory = collect_rollout(
            self.env, self.policy, self.spec.rollout_steps, generator=self.sampler
        )
        return TensorDict(
            {
                "trajectory": trajectory,
                "episode_returns": self.env.pop_finished_returns(),
                "policy_version": torch.tensor(version),
            },
            batch_size=[],
        ).to("cpu")


def _serve(
    spec: WorkerSpec, scheme: WeightSyncScheme, weight_pipe: Connection, data_pipe: Connection
) -> None:
    actor = Actor(spec)
    policy = actor.policy
    scheme.init_on_receiver(MODEL_ID, model=policy, pipe=weight_pipe)
    data_pipe.send(READY)
    scheme.connect()
    receiver = scheme.get_receiver()

    while not scheme.closed:
        wait([data_pipe, weight_pipe], timeout=IDLE_WAKEUP_S)
        scheme.receive(0.0)
        if not data_pipe.poll():
            continue
        command = data_pipe.recv()
        if command == STOP:
            return
        scheme.receive(0.0)  # act with the newest weights there are
        if command == COLLECT:
            message = actor.rollout(receiver.version)
            # Pickled by value: no shared-memory segment per batch that a crash could leak.
            data_pipe.send_bytes(pickle.dumps(message))
        elif command == REPORT:
            data_pipe.send((receiver.version, weights_checksum(policy)))
        else:
            raise ValueError(f"worker {spec.worker_id} got an unknown command {command!r}")
