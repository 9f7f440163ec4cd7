"""SharedMemTransport: buffers' handles reach each worker once over its pipe; after that an
update is written into shared memory and no message crosses the pipe.

Both ends run in this process over real pipes and real shared memory (a thread plays the worker
while registration waits for it); the scheme matrix covers spawned workers."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers.inprocess import CountingConnection
from tests.helpers.models import make_model, perturb
from weightsync import SharedMemTransport, WeightMismatchError, WeightStrategy
from weightsync.transports import SharedMemReader
from weightsync.weights import flatten_weights

STRATEGY = WeightStrategy("state_dict")


def _adopt(reader: SharedMemReader, timeout: float = 5.0):
    """What a receiver does with an update: take it and acknowledge it."""
    update = reader.poll(timeout)
    assert update is not None, "no update reached the worker"
    reader.acknowledge(update)
    return update


@pytest.fixture
def setup():
    """A transport with two registered workers (pipes spied on) and their readers."""
    pairs = [mp.Pipe() for _ in range(2)]
    transport = SharedMemTransport(timeout=5.0)
    spies = [CountingConnection(trainer_end) for trainer_end, _ in pairs]
    for spy in spies:
        transport.register_pipe(spy)
    readers = [SharedMemReader(worker_end, timeout=5.0) for _, worker_end in pairs]
    yield transport, spies, readers
    transport.close()
    for reader in readers:
        reader.close()


def _register(transport, readers, model_id, weights):
    """register_weights blocks until every worker adopted the buffers: serve them in threads."""
    updates = [None] * len(readers)

    def serve(i):
        updates[i] = _adopt(readers[i])

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(len(readers))]
    for t in threads:
        t.start()
    transport.register_weights(model_id, weights)
    for t in threads:
        t.join(5.0)
    return updates


def test_registration_hands_each_worker_the_buffers_once(setup):
    transport, spies, readers = setup
    model = make_model()
    updates = _register(transport, readers, "policy", STRATEGY.extract_weights(model))
    for spy, update in zip(spies, updates, strict=True):
        assert len(spy.sent) == 1  # one message: the handles
        assert update.version == 0 and update.zero_copy
        assert torch.equal(update.buffer.read().tensors["head.weight"], model.head.weight)
    assert transport.acked_versions == {0: 0, 1: 0}


def test_an_update_moves_no_message_through_the_pipe(setup):
    transport, spies, readers = setup
    model = make_model()
    _register(transport, readers, "policy", STRATEGY.extract_weights(model))
    for step in range(1, 4):
        perturb(model, step)
        transport.send_weights("policy", STRATEGY.extract_weights(model))
    assert [len(spy.sent) for spy in spies] == [1, 1]  # still only the registration
    for reader in readers:
        assert not reader.link.pipe.poll(0)  # nothing waiting on the worker's end either
        update = _adopt(reader)
        assert update.version == 3  # coalesced: the latest, complete
        flat = update.buffer.read()
        assert torch.equal(flat.tensors["encoder.1.running_mean"], model.encoder[1].running_mean)
        assert flat.extra[""] == {"updates": 3}


def test_receive_weights_has_nothing_to_wait_for(setup):
    transport, _, _ = setup
    assert transport.receive_weights(timeout=0.01) is None


def test_the_first_send_registers_with_auto_register(setup):
    transport, spies, readers = setup
    model = make_model()
    threads = [threading.Thread(target=_adopt, args=(reader,)) for reader in readers]
    for t in threads:
        t.start()
    transport.send_weights("policy", STRATEGY.extract_weights(model))
    for t in threads:
        t.join(5.0)
    assert [len(spy.sent) for spy in spies] == [1, 1]
    assert transport.rings["policy"].published_version == 1


def test_without_auto_register_an_unregistered_model_is_refused():
    transport = SharedMemTransport(auto_register=False)
    with pytest.raises(RuntimeError, match=r"model 'policy' is not registered.*register_weights"):
        transport.send_weights("policy", STRATEGY.extract_weights(make_model()))


def test_a_model_registers_once(setup):
    transport, _, readers = setup
    weights = STRATEGY.extract_weights(make_model())
    _register(transport, readers, "policy", weights)
    with pytest.raises(RuntimeError, match="already registered"):
        transport.register_weights("policy", weights)


def test_weights_that_do_not_fit_the_registered_model_are_refused(setup):
    transport, _, readers = setup
    _register(transport, readers, "policy", STRATEGY.extract_weights(make_model()))
    with pytest.raises(WeightMismatchError, match=r"vs\. the registered model"):
        transport.send_weights("policy", STRATEGY.extract_weights(torch.nn.Linear(4, 2)))
    assert transport.rings["policy"].published_version == 0


def test_a_subset_of_workers_cannot_be_chosen(setup):
    transport, _, readers = setup
    weights = STRATEGY.extract_weights(make_model())
    _register(transport, readers, "policy", weights)
    flat = flatten_weights(weights)
    with pytest.raises(ValueError, match="cannot select a subset"):
        transport.start("policy", 1, flat, worker_ids=[1])
