"""WeightSender and WeightReceiver over real pipes and shared memory, both ends in this process.

The pipe scheme is driven in one thread where possible (``send_async`` puts the update on the
pipe, the receiver applies it, ``wait_async`` collects the ack), so ordering is deterministic."""

from __future__ import annotations

import pickle
import threading

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from tests.helpers.inprocess import ThreadWorker, connected_pair
from tests.helpers.models import assert_same_state, make_model, perturb, same_weights, state_of
from weightsync import (
    WeightMismatchError,
    WeightReceiver,
    WeightSender,
    WeightStrategy,
    WeightSyncScheme,
    WorkerRejectedError,
)

BACKENDS = ["pipe", "shared-mem"]


@pytest.fixture(params=BACKENDS)
def pair(request):
    """A connected trainer scheme and worker scheme (one worker) of each backend."""
    trainer_model, worker_model = make_model(0), make_model(1)
    pair = connected_pair(request.param, trainer_model, worker_model)
    yield pair.trainer, pair.worker, trainer_model, worker_model
    pair.close()


def _deliver(trainer, worker, weights=None, **kwargs):
    """One update, single-threaded: start, let the worker apply, finish. Returns receive()."""
    sender = trainer.get_sender()
    sender.send_async(weights, **kwargs)
    applied = worker.get_receiver().receive(timeout=5.0)
    sender.wait_async()
    return applied


def test_after_connect_the_worker_holds_the_trainers_weights(pair):
    _, _, trainer_model, worker_model = pair
    assert same_weights(worker_model, trainer_model)


def test_receive_is_true_only_when_new_weights_were_applied(pair):
    trainer, worker, trainer_model, worker_model = pair
    receiver = worker.get_receiver()
    assert receiver.receive(timeout=0.01) is False  # nothing new
    perturb(trainer_model, 1)
    assert _deliver(trainer, worker) is True
    assert same_weights(worker_model, trainer_model)
    assert receiver.receive(timeout=0.01) is False  # nothing new again


def test_a_second_async_send_while_one_is_pending_is_refused(pair):
    trainer, worker, _, _ = pair
    sender = trainer.get_sender()
    sender.send_async()
    with pytest.raises(RuntimeError, match=r"still pending; call wait_async\(\)"):
        sender.send_async()
    worker.get_receiver().receive(timeout=5.0)
    sender.wait_async()  # the pending one completes normally
    assert worker.get_receiver().version == sender.version


def test_wait_async_with_none_pending_is_refused(pair):
    trainer, _, _, _ = pair
    with pytest.raises(RuntimeError, match="no send pending"):
        trainer.get_sender().wait_async()


@pytest.mark.parametrize("kind", ["module", "state_dict", "tensordict"])
def test_send_given_weights_in_any_format(pair, kind):
    trainer, worker, trainer_model, worker_model = pair
    other = make_model(7)
    perturb(other, 2)
    weights = {
        "module": other,
        "state_dict": WeightStrategy("state_dict").extract_weights(other),
        "tensordict": WeightStrategy("tensordict").extract_weights(other),
    }[kind]
    assert _deliver(trainer, worker, weights) is True
    assert same_weights(worker_model, other)
    assert not same_weights(trainer_model, other)  # the trainer's own model was not touched


def test_update_weights_is_the_legacy_send_to_all():
    trainer_end, worker_end = mp.Pipe()
    trainer = WeightSyncScheme.from_backend("pipe", timeout=5.0)
    trainer.init_on_sender("policy", model=make_model(0), pipes=[trainer_end])
    worker = ThreadWorker(trainer, make_model(1), worker_end, connect=False)
    other = make_model(5)
    trainer.get_sender().update_weights(WeightStrategy("tensordict").extract_weights(other))
    assert same_weights(worker.model, other)  # applied by the time update_weights returned
    worker.stop()
    trainer.shutdown()


def test_send_blocks_until_every_worker_applied_and_chosen_workers_only():
    pipes = [mp.Pipe() for _ in range(2)]
    trainer_model = make_model(0)
    trainer = WeightSyncScheme.from_backend("pipe", timeout=5.0)
    trainer.init_on_sender("policy", model=trainer_model, pipes=[t for t, _ in pipes])
    workers = [ThreadWorker(trainer, make_model(1), w) for _, w in pipes]
    trainer.connect()
    perturb(trainer_model, 1)
    trainer.send()
    assert all(same_weights(w.model, trainer_model) for w in workers)  # no waiting needed
    perturb(trainer_model, 2)
    trainer.send(worker_ids=[1])
    assert same_weights(workers[1].model, trainer_model) and not same_weights(
        workers[0].model, trainer_model
    )
    assert trainer.get_sender().acked_versions == {0: 2, 1: 3}
    for w in workers:
        w.stop()
    trainer.shutdown()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_worker_refusal_names_the_worker_and_leaves_its_model_unchanged(backend):
    trainer_end, worker_end = mp.Pipe()
    trainer = WeightSyncScheme.from_backend(backend, timeout=5.0)
    trainer.init_on_sender("policy", model=make_model(0), pipes=[trainer_end])
    misfit = make_model(1)
    misfit.head = nn.Linear(8, 3)  # the trainer's head has 2 outputs
    before = state_of(misfit)
    worker = ThreadWorker(trainer, misfit, worker_end, connect=False)
    with pytest.raises(WorkerRejectedError, match=r"refused by worker\(s\) \[0\]") as info:
        trainer.send()
    assert info.value.workers == [0] and "'head.weight'" in str(info.value)
    assert worker.scheme.get_receiver().refused  # the problems it found, kept for connect()
    assert worker.version == 0
    after = state_of(misfit)
    assert all(torch.equal(after[k], v) for k, v in before.items() if isinstance(v, torch.Tensor))
    worker.stop()
    trainer.shutdown()


def test_receiver_apply_weights_validates_then_applies(pair):
    _, worker, _, worker_model = pair
    receiver = worker.get_receiver()
    other = make_model(9)
    receiver.apply_weights(WeightStrategy("state_dict").extract_weights(other))
    assert same_weights(worker_model, other)
    with pytest.raises(WeightMismatchError, match="model 'policy'"):
        receiver.apply_weights({"head.weight": torch.zeros(1)})
    assert same_weights(worker_model, other)


class Unpicklable:
    """A context a trainer might pass (a collector holding a lock, processes...)."""

    def __init__(self, model):
        self.policy = model
        self.lock = threading.Lock()


def test_pickling_a_sender_drops_the_context():
    trainer_end, worker_end = mp.Pipe()
    scheme = WeightSyncScheme.from_backend("pipe")
    scheme.init_on_sender("policy", Unpicklable(make_model()), pipes=[trainer_end])
    sender = scheme.get_sender()
    sender.version = 4
    with pytest.raises(TypeError):
        pickle.dumps(scheme._context)
    copy = pickle.loads(pickle.dumps(sender))
    assert isinstance(copy, WeightSender) and copy.context is None and copy.version == 4
    assert copy.transport is None
    scheme.shutdown()
    worker_end.close()


def test_pickling_a_receiver_drops_the_scheme(pair):
    _, worker, _, _ = pair
    copy = pickle.loads(pickle.dumps(worker.get_receiver()))
    assert isinstance(copy, WeightReceiver) and copy.transport is None and copy.model is None
    assert copy.version == worker.get_receiver().version


def test_a_worker_model_that_changed_structure_is_validated_again():
    """Validation is cached per layout; a worker model that gains a parameter is checked anew."""
    trainer_end, worker_end = mp.Pipe()
    trainer, worker = (WeightSyncScheme.from_backend("pipe", timeout=10) for _ in range(2))
    trainer_model, worker_model = nn.Linear(3, 2), nn.Linear(3, 2)
    trainer.init_on_sender("policy", model=trainer_model, pipes=[trainer_end])
    worker.init_on_receiver("policy", model=worker_model, pipe=worker_end)
    receiving = threading.Thread(target=lambda: [worker.receive(5) for _ in range(2)])
    receiving.start()
    trainer.connect()
    worker_model.extra = nn.Parameter(torch.zeros(1))
    before = state_of(worker_model)
    with pytest.raises(WorkerRejectedError, match="missing key 'extra'"):
        trainer.send()
    receiving.join(10)
    assert_same_state(state_of(worker_model), before, "worker after a refused update")
    trainer_end.close()
    worker_end.close()


def _lives_in(tensor: torch.Tensor, buffers: list) -> bool:
    start = tensor.data_ptr()
    return any(b.data.data_ptr() <= start < b.data.data_ptr() + b.data.numel() for b in buffers)


@pytest.mark.parametrize(
    ("model_factory", "adopts_in_place"),
    [
        (lambda: nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 64)), True),  # large tensors
        (lambda: nn.Sequential(*[nn.Linear(4, 4) for _ in range(50)]), False),  # 100 tiny ones
    ],
)
def test_shared_mem_workers_adopt_large_tensors_in_place_and_copy_tiny_ones(
    model_factory, adopts_in_place
):
    """Re-pointing costs per tensor, copying per byte: a model of large tensors is adopted with no
    copy (its parameters become views of the snapshot), one of tiny tensors is copied out."""
    trainer_end, worker_end = mp.Pipe()
    torch.manual_seed(0)
    trainer_model = model_factory()
    trainer = WeightSyncScheme.from_backend("shared-mem", timeout=10)
    worker = ThreadWorker(trainer, model_factory(), worker_end, connect=False)
    trainer.init_on_sender("policy", model=trainer_model, pipes=[trainer_end])
    trainer.connect()
    with torch.no_grad():
        trainer_model[0].weight.add_(1)
    trainer.send()
    assert worker.wait_for(trainer.get_sender().version) == trainer.get_sender().version
    worker.stop()
    assert same_weights(worker.model, trainer_model)
    snapshots = trainer.get_sender().transport.rings["policy"].buffers
    in_snapshot = [_lives_in(p, snapshots) for p in worker.model.parameters()]
    assert all(in_snapshot) if adopts_in_place else not any(in_snapshot)
    trainer.shutdown()
    trainer_end.close()
