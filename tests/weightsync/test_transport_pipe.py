"""MPTransport: weights over a multiprocessing pipe, acknowledged, every wait bounded.

Protocol tests run both ends in this process (a thread plays the worker); the last test runs the
worker end in a spawned process."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers.spawned import echo_transport
from weightsync import (
    MPTransport,
    PeerDiedError,
    SharedMemTransport,
    SyncTimeoutError,
    TransportBackend,
    WorkerRejectedError,
)


@pytest.fixture
def ends():
    trainer_end, worker_end = mp.Pipe()
    yield MPTransport(trainer_end, timeout=5.0, worker_id=3), MPTransport(worker_end, timeout=5.0)
    trainer_end.close()
    worker_end.close()


class UserTransport:
    """A transport a user might plug in: only the three protocol methods."""

    def send_weights(self, model_id, weights):
        self.last = (model_id, weights)

    def receive_weights(self, timeout=1.0):
        return getattr(self, "last", None)

    def check_connection(self):
        return True


def test_transport_backend_is_a_structural_protocol(ends):
    assert isinstance(ends[0], TransportBackend)
    assert isinstance(SharedMemTransport(), TransportBackend)
    assert isinstance(UserTransport(), TransportBackend)
    assert not isinstance(object(), TransportBackend)


def test_receive_weights_returns_none_on_timeout(ends):
    _, worker = ends
    assert worker.receive_weights(timeout=0.01) is None


def test_send_weights_blocks_until_the_worker_acknowledges(ends):
    trainer, worker = ends
    received, may_ack, returned = threading.Event(), threading.Event(), threading.Event()
    got = []

    def play_worker():
        got.append(worker.receive_weights(timeout=5.0))
        received.set()
        may_ack.wait(5.0)
        worker.send_ack()

    def send():
        trainer.send_weights("policy", {"w": torch.arange(3.0)})
        returned.set()

    threads = [threading.Thread(target=play_worker), threading.Thread(target=send)]
    for t in threads:
        t.start()
    assert received.wait(5.0)
    assert not returned.wait(0.2), "send_weights returned before the worker acknowledged"
    may_ack.set()
    for t in threads:
        t.join(5.0)
    assert returned.is_set()
    assert got[0][0] == "policy" and torch.equal(got[0][1]["w"], torch.arange(3.0))


def test_send_async_then_wait_ack(ends):
    trainer, worker = ends
    trainer.send_weights_async("policy", {"w": torch.ones(2)})
    model_id, weights = worker.receive_weights(timeout=1.0)
    assert model_id == "policy" and torch.equal(weights["w"], torch.ones(2))
    worker.send_ack()
    trainer.wait_ack()
    trainer.send_weights_async("policy", {"w": torch.zeros(2)})  # the next one may go
    assert worker.receive_weights(timeout=1.0)[0] == "policy"


def test_a_second_async_send_before_the_ack_is_refused(ends):
    trainer, _ = ends
    trainer.send_weights_async("policy", 1)
    with pytest.raises(RuntimeError, match="has not acknowledged version 1 of model 'policy'"):
        trainer.send_weights_async("policy", 2)


def test_wait_ack_with_nothing_pending_is_refused(ends):
    with pytest.raises(RuntimeError, match="no send pending"):
        ends[0].wait_ack()


def test_legacy_send_ack_and_check_ack_with_a_message(ends):
    trainer, worker = ends
    trainer.send_weights_async("policy", 1)
    worker.receive_weights(1.0)
    worker.send_ack("done")
    trainer.check_ack("done")
    trainer.send_weights_async("policy", 2)  # check_ack completed the pending send
    worker.receive_weights(1.0)
    worker.send_ack("updated")
    with pytest.raises(RuntimeError, match="expected acknowledgement 'other' from worker 3"):
        trainer.check_ack("other")


def test_a_refusal_is_a_worker_rejected_error_naming_the_worker(ends):
    trainer, worker = ends
    trainer.send_weights_async("policy", 1)
    worker.receive_weights(1.0)
    worker.send_error("shapes differ")
    with pytest.raises(WorkerRejectedError, match=r"\[worker 3\] shapes differ") as info:
        trainer.wait_ack()
    assert info.value.workers == [3]


def test_a_silent_worker_is_a_timeout_naming_worker_model_and_version():
    trainer_end, worker_end = mp.Pipe()
    trainer = MPTransport(trainer_end, timeout=0.05, worker_id=1)
    trainer.send_weights_async("critic", 1)
    with pytest.raises(SyncTimeoutError, match="worker 1 did not acknowledge version 1 of model"):
        trainer.wait_ack()
    trainer_end.close()
    worker_end.close()


def test_check_connection_is_false_once_the_peer_closed(ends):
    trainer, worker = ends
    assert trainer.check_connection() and worker.check_connection()
    worker.pipe.close()
    assert not trainer.check_connection()
    with pytest.raises(PeerDiedError, match="worker 3"):
        trainer.send_weights("policy", 1)


def test_close_reaches_the_worker_as_the_end_of_updates(ends):
    trainer, worker = ends
    trainer.close()
    assert worker.receive_weights(timeout=1.0) is None
    assert worker.closed and not worker.check_connection()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_weights_cross_a_process_boundary_and_each_send_waits_for_the_ack(procs):
    trainer_end, worker_end = procs.pipe()
    process = procs.start(echo_transport, worker_end)
    worker_end.close()  # the child holds its own copy; ours must not keep the pipe open
    trainer = MPTransport(trainer_end, timeout=30.0, worker_id=0)
    for step in range(3):
        weights = {"w": torch.full((4,), float(step)), "b": torch.arange(step + 1)}
        trainer.send_weights("policy", weights)
        # the worker acknowledged with the sum it computed from what it received
        trainer.send_weights_async("policy", "sum?")
        trainer.check_ack(f"{float(weights['w'].sum() + weights['b'].sum())}")
    assert trainer.check_connection()
    trainer.close()
    process.join(30)
    assert process.exitcode == 0


def test_an_answer_due_when_the_trainer_shut_down_cleanly_ends_the_connection_quietly():
    trainer_end, worker_end = mp.Pipe()
    trainer, worker = MPTransport(trainer_end, timeout=1.0, worker_id=0), MPTransport(worker_end)
    trainer.send_weights_async("policy", {"w": torch.ones(1)})
    assert worker.receive_weights(timeout=1.0) is not None
    trainer.close()  # the trainer shuts down before the worker answers
    worker.send_ack()
    assert worker.closed
    worker_end.close()


def test_an_answer_to_a_trainer_that_vanished_is_a_peer_died_error():
    trainer_end, worker_end = mp.Pipe()
    trainer, worker = MPTransport(trainer_end, timeout=1.0, worker_id=0), MPTransport(worker_end)
    trainer.send_weights_async("policy", {"w": torch.ones(1)})
    assert worker.receive_weights(timeout=1.0) is not None
    trainer_end.close()  # gone without a CLOSE: a crash
    with pytest.raises(PeerDiedError, match="the trainer"):
        worker.send_ack()
    worker_end.close()
