"""Errors: specific types, messages that name who and what, and they survive pickling (a worker
reports them to its trainer, a pool returns them to its caller)."""

from __future__ import annotations

import pickle

import pytest

from weightsync import (
    ModelPathError,
    NonFiniteWeightsError,
    PeerDiedError,
    SyncTimeoutError,
    WeightMismatchError,
    WeightSyncError,
    WorkerRejectedError,
)


@pytest.mark.parametrize(
    "error",
    [
        WeightMismatchError("policy", ["missing key 'bias'"]),
        WorkerRejectedError("policy", 3, {1: "shape differs", 0: "dtype differs"}),
        PeerDiedError("worker 2 is gone", workers=[2]),
        SyncTimeoutError("worker 0 did not answer", workers=[0]),
        NonFiniteWeightsError("NaN in 'head.weight'"),
        ModelPathError("step 'x' failed"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_survive_pickling_with_their_fields(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.workers == error.workers
    for field in ("model_id", "problems", "version", "rejections"):
        assert getattr(copy, field, None) == getattr(error, field, None), field


def test_every_error_is_a_weight_sync_error_and_a_builtin_kind():
    assert issubclass(WeightMismatchError, ValueError)
    assert issubclass(SyncTimeoutError, TimeoutError)
    assert issubclass(PeerDiedError, ConnectionError)
    assert issubclass(ModelPathError, LookupError)
    for cls in (WeightMismatchError, SyncTimeoutError, PeerDiedError, WorkerRejectedError):
        assert issubclass(cls, WeightSyncError)


def test_a_rejection_names_the_workers_the_model_and_the_version():
    error = WorkerRejectedError("critic", 7, {2: "shape differs", 0: "dtype differs"})
    assert error.workers == [0, 2]
    message = str(error)
    assert "version 7 of model 'critic'" in message and "[0, 2]" in message
    assert "[worker 2] shape differs" in message


def test_a_mismatch_lists_every_problem_and_says_nothing_was_applied():
    error = WeightMismatchError("policy", ["missing key 'bias'", "unexpected key 'extra'"])
    assert "model 'policy'" in str(error) and "nothing was applied" in str(error)
    assert "missing key 'bias'" in str(error) and "unexpected key 'extra'" in str(error)
