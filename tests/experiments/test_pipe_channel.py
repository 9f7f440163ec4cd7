"""A spawned worker's channel (``experiments/pool.py``): answers leave on a thread of their own,
so the actor loop is never held by a trainer that is not reading; order is kept, and a trainer
that is gone surfaces as the error the worker's entry point treats as "nobody left"."""

from __future__ import annotations

import pickle
import threading
from multiprocessing import Pipe

import pytest
import torch
from tensordict import TensorDict

from experiments.pool import READY, PipeChannel

pytestmark = pytest.mark.timeout(60)

ATARI_ROLLOUT = (128, 8, 4, 84, 84)  # steps x envs x stacked 84x84 frames: 29 MB of uint8


def _rollout(fill: int) -> TensorDict:
    frames = torch.full(ATARI_ROLLOUT, fill, dtype=torch.uint8)
    return TensorDict({"obs": frames}, batch_size=ATARI_ROLLOUT[:2])


def test_a_rollout_larger_than_the_pipe_leaves_the_loop_free_until_the_trainer_reads() -> None:
    trainer, worker = Pipe()
    weights, _ = Pipe()
    channel = PipeChannel(worker, weights)
    returned = threading.Event()

    def act() -> None:  # the actor loop's sends: a blocking pipe would hold it on the first one
        channel.ready()
        channel.send_rollout(_rollout(1))
        channel.send_rollout(_rollout(2))
        channel.send_report(7, "digest")
        returned.set()

    loop = threading.Thread(target=act, daemon=True)
    loop.start()
    # A liveness bound: pickling 2 x 29 MB takes well under a second on an idle machine.
    assert returned.wait(30), "the actor loop was held by a trainer that was not reading"
    assert trainer.recv() == READY
    for fill in (1, 2):
        rollout = pickle.loads(trainer.recv_bytes())
        assert rollout["obs"].shape == ATARI_ROLLOUT and bool((rollout["obs"] == fill).all())
    assert trainer.recv() == (7, "digest")
    channel.close(timeout=10)
    trainer.close()
    worker.close()


def test_a_trainer_that_is_gone_raises_at_the_next_send_or_at_close() -> None:
    trainer, worker = Pipe()
    weights, _ = Pipe()
    channel = PipeChannel(worker, weights)
    trainer.close()
    channel.send_report(1, "digest")  # queued; its send fails on the outbox thread
    with pytest.raises((BrokenPipeError, ConnectionResetError, EOFError)):
        channel.close(timeout=10)
    worker.close()
