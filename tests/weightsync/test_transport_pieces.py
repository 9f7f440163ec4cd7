"""The pieces every transport is built from: the worker set, failure aggregation, staging.

Each backend's own tests run these pieces through real processes; here each one's rules are
pinned on its own: the ids a send may name, which error a mix of failures becomes, how a dead
process is described, and when a staging buffer is written, reused or retired.
"""

from __future__ import annotations

import signal

import pytest
import torch

from tests.helpers.dead_at_start import fails_to_start
from tests.helpers.models import make_model
from weightsync import PeerDiedError, SyncTimeoutError, WorkerRejectedError
from weightsync.transports.staging import GIVEN_SLOT, MODEL_SLOT, Staging
from weightsync.transports.workers import Failures, WorkerSet, describe_exit
from weightsync.weights import module_weights


def test_a_send_may_name_only_live_workers():
    workers = WorkerSet(3)
    assert workers.targets(None) == [0, 1, 2]
    assert workers.remove([1, 7]) == [1]  # 7 was never a worker, 1 was live
    assert workers.targets(None) == [0, 2]
    assert workers.targets([2, 0, 2]) == [0, 2]
    with pytest.raises(ValueError, match=r"unknown or removed worker id\(s\) \[1, 5\].*\[0, 2\]"):
        workers.targets([0, 1, 5])
    assert workers.add() == 3 and workers.targets(None) == [0, 2, 3]


def test_dead_beats_silent_beats_refused_and_every_worker_is_named():
    failures = Failures()
    failures.add_refused(2, "shape mismatch")
    assert isinstance(failures.error("policy", 4), WorkerRejectedError)
    failures.add_silent(1, "worker 1 did not answer")
    silent = failures.error("policy", 4)
    assert isinstance(silent, SyncTimeoutError) and silent.workers == [1]
    failures.add_dead(0, "worker 0 died")
    dead = failures.error("policy", 4)
    assert isinstance(dead, PeerDiedError) and dead.workers == [0, 1]
    assert str(dead) == "worker 0 died; worker 1 did not answer"
    assert Failures().error("policy", 4) is None


def test_a_dead_process_is_described_by_its_exit(procs):
    exited = procs.start(fails_to_start)
    killed = procs.start(signal.pause)
    assert describe_exit(killed) is None  # running
    killed.kill()
    exited.join(timeout=60)
    killed.join(timeout=60)
    assert describe_exit(exited) == f"process {exited.pid} exited with code 1"
    assert describe_exit(killed) == f"process {killed.pid} was killed by SIGKILL"

    class Reporting:  # a handle that also tells what the process said before it ended
        pid, sentinel, exitcode = exited.pid, exited.sentinel, exited.exitcode

        def last_words(self):
            return "ImportError: no env"

    assert describe_exit(Reporting()).endswith("; it reported: ImportError: no env")


def test_sends_never_write_into_the_buffer_the_trainers_model_lives_in():
    model = make_model(seed=0)
    weights = module_weights(model)
    staging = Staging(shared=False)
    slot, first = staging.stage(weights, None)  # nothing lent yet: the model's slot
    assert slot == MODEL_SLOT and first is staging.model_buffer
    source = staging.source(weights)
    assert source is first  # the same layout: reused, now lent
    assert staging.stage(weights, source) == (MODEL_SLOT, source)  # bound: nothing copied
    slot, given = staging.stage(module_weights(make_model(seed=1)), None)
    assert slot == GIVEN_SLOT and given is not source  # explicit weights: the other buffer
    assert not staging.retired(source)
    staging.retire()  # a worker timed out: it may still read them
    assert staging.retired(source) and staging.model_buffer is None
    assert staging.stage(weights, source)[1] is not source  # the next send: a fresh buffer
    assert staging.shared_bytes == 0  # private buffers
    assert Staging(shared=True).source(weights).data.is_shared()


def test_a_buffer_is_remade_when_the_weights_no_longer_fit_it():
    staging = Staging(shared=False)
    old = staging.source(module_weights(make_model(seed=0)))
    wider = module_weights(torch.nn.Linear(3, 5))
    assert staging.source(wider) is not old and staging.retired(old)
