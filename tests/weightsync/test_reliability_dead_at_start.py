"""A worker that dies before ``connect()`` is named dead at once, on every scheme: which worker,
its exit code, never a wait of the whole timeout that calls it "slow to start".

Each scheme's timeout here is far longer than the test's own: a trainer that waited it out
would fail the test rather than pass it late.
"""

from __future__ import annotations

import pytest

from tests.helpers.dead_at_start import fails_after_init, fails_to_start
from tests.helpers.models import make_model
from weightsync import PeerDiedError, WeightSyncScheme

pytestmark = [pytest.mark.slow, pytest.mark.timeout(100)]

NEVER = 600.0  # seconds: a scheme timeout no passing run waits out
BACKENDS = ["pipe", "shared-mem", "distributed"]


def _scheme(backend: str, num_workers: int) -> WeightSyncScheme:
    if backend == "distributed":
        return WeightSyncScheme.from_backend(
            backend, num_workers=num_workers, timeout=NEVER, join_timeout=NEVER
        )
    return WeightSyncScheme.from_backend(backend, timeout=NEVER)


@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_that_die_before_connect_are_named_with_their_exit_code(procs, backend):
    scheme = _scheme(backend, num_workers=2)
    pipes = [procs.pipe() for _ in range(2)]
    workers = [procs.start(fails_to_start, worker_end) for _, worker_end in pipes]
    scheme.init_on_sender(
        "policy",
        model=make_model(seed=0),
        pipes=[trainer_end for trainer_end, _ in pipes],
        processes=workers,
    )
    try:
        with pytest.raises(PeerDiedError) as caught:
            scheme.connect()
    finally:
        scheme.shutdown()
    assert caught.value.workers == [0, 1]
    for worker in workers:
        assert f"process {worker.pid} exited with code 1" in str(caught.value)
    assert "slow to start" not in str(caught.value)


def test_a_worker_that_dies_after_building_its_receiver_is_named_without_its_process(procs):
    """The trainer was not told the processes (and still holds the worker's end of its pipe, so
    no end of file comes): the worker's receiver introduced itself when it was built, and its
    exit is seen through that."""
    scheme = _scheme("shared-mem", num_workers=1)
    trainer_end, worker_end = procs.pipe()
    worker = procs.start(fails_after_init, scheme, worker_end)
    scheme.init_on_sender("policy", model=make_model(seed=0), pipes=[trainer_end])
    try:
        with pytest.raises(PeerDiedError) as caught:
            scheme.connect()
    finally:
        scheme.shutdown()
    assert caught.value.workers == [0]
    assert f"process {worker.pid} exited" in str(caught.value)
