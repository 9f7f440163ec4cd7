"""The newer lifecycle: connect (rendez-vous with the initial weights), send, receive(timeout),
shutdown; model ids as paths on a context. Worker ends run in threads of this process."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from tests.helpers.inprocess import ThreadWorker, connected_pair
from tests.helpers.models import make_model, perturb, same_weights
from weightsync import (
    ModelPathError,
    SyncTimeoutError,
    WeightMismatchError,
    WeightSyncScheme,
    WorkerRejectedError,
)

BACKENDS = ["pipe", "shared-mem"]


@pytest.mark.parametrize("strategy", ["state_dict", "tensordict"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_connect_send_receive_shutdown(backend, strategy):
    trainer_model, worker_model = make_model(0), make_model(1)
    pair = connected_pair(backend, trainer_model, worker_model, strategy=strategy)
    trainer, worker = pair.trainer, pair.worker
    assert same_weights(worker_model, trainer_model)  # version 0 after the rendez-vous
    assert worker.receive(timeout=0.01) is False
    for step in range(1, 3):
        perturb(trainer_model, step)
        trainer.send_async()
        assert worker.receive(timeout=5.0) is True
        trainer.wait_async()
        assert same_weights(worker_model, trainer_model)
    assert not worker.closed
    trainer.shutdown()
    assert worker.receive(timeout=0.5) is False
    assert worker.closed  # the trainer's shutdown reached the worker
    worker.shutdown()
    assert worker.role is None and trainer.role is None
    pair.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_worker_connect_without_a_trainer_times_out_naming_the_model(backend):
    trainer_end, worker_end = mp.Pipe()
    worker = WeightSyncScheme.from_backend(backend, timeout=5.0)
    worker.init_on_receiver("critic", model=nn.Linear(2, 2), pipe=worker_end)
    with pytest.raises(SyncTimeoutError, match=r"no initial weights for model 'critic'.*0\.05 s"):
        worker.connect(timeout=0.05)
    worker.shutdown()
    trainer_end.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_worker_whose_model_does_not_fit_fails_connect_with_the_keys(backend):
    trainer_end, worker_end = mp.Pipe()
    trainer = WeightSyncScheme.from_backend(backend, timeout=5.0)
    trainer.init_on_sender("policy", model=nn.Linear(4, 2), pipes=[trainer_end])
    worker = ThreadWorker(trainer, nn.Linear(4, 3), worker_end, loop=False)
    with pytest.raises(WorkerRejectedError, match=r"worker\(s\) \[0\]") as info:
        trainer.connect()
    worker.thread.join(5.0)
    # the worker's connect says what does not fit, not that nothing arrived
    assert isinstance(worker.error, WeightMismatchError), worker.error
    assert "'weight': expected shape (3, 4)" in str(worker.error)
    assert info.value.workers == [0]
    trainer.shutdown()
    worker.scheme.shutdown()


@pytest.mark.parametrize("model_id", ["policy", "env.transform[0].module", 'models["critic"]'])
@pytest.mark.parametrize("backend", BACKENDS)
def test_model_ids_are_paths_on_the_context(backend, model_id):
    def world(seed):
        torch.manual_seed(seed)
        return SimpleNamespace(
            policy=nn.Linear(4, 2),
            env=SimpleNamespace(transform=[SimpleNamespace(module=nn.Linear(3, 3))]),
            models={"critic": nn.Linear(4, 1)},
        )

    trainer_ctx, worker_ctx = world(0), world(1)
    pair = connected_pair(
        backend, model_id=model_id, trainer_context=trainer_ctx, worker_context=worker_ctx
    )
    parts = {
        "policy": lambda c: c.policy,
        "env.transform[0].module": lambda c: c.env.transform[0].module,
        'models["critic"]': lambda c: c.models["critic"],
    }
    for name, get in parts.items():  # the path's model is synced, the others are not
        assert same_weights(get(worker_ctx), get(trainer_ctx)) == (name == model_id), name
    pair.close()


def test_a_model_id_that_does_not_resolve_names_the_failing_step():
    trainer_end, worker_end = mp.Pipe()
    context = SimpleNamespace(env=SimpleNamespace(transform=[]))
    with pytest.raises(ModelPathError, match=r"step '\[0\]' failed after 'env.transform'"):
        WeightSyncScheme.from_backend("pipe").init_on_sender(
            "env.transform[0].module", context, pipes=[trainer_end]
        )
    trainer_end.close()
    worker_end.close()
