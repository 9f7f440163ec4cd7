"""weightsync's schemes inside TorchRL's own multi-process collectors, driven the way TorchRL
drives its schemes: the weights every worker acts with, its policy version, a dead worker."""

from __future__ import annotations

import pytest

pytest.importorskip("torchrl", reason="the interop suite needs torchrl (the [torchrl] extra)")

from torchrl.collectors import Collector, MultiAsyncCollector, MultiSyncCollector
from torchrl.weight_update import WeightSyncScheme as TorchRLScheme

from tests.helpers.torchrl_collectors import (
    NUM_WORKERS,
    collector_of,
    make_env,
    make_env_without_its_package,
    make_policy,
    rollout_weights,
    set_bias,
    weights_with_bias,
)
from weightsync import PeerDiedError, SyncTimeoutError, WeightSyncScheme

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SYNCED = ["pipe", "shared-mem"]
BATCHES_TO_CATCH_UP = 3  # a rollout already under way when an update lands finishes on the old one


def per_worker(batch) -> list[tuple[float, int]]:
    """(bias, version) of each worker's rollout in a MultiSyncCollector batch (one row each)."""
    assert batch.shape[0] == NUM_WORKERS
    return [rollout_weights(batch[w]) for w in range(NUM_WORKERS)]


def wait_for_every_worker(batches, bias: float, version: int) -> None:
    """Every worker acts with ``bias`` at ``version`` within a few batches, never going back."""
    seen = None
    for _ in range(BATCHES_TO_CATCH_UP):
        seen = per_worker(next(batches))
        if all(got == (bias, version) for got in seen):
            return
    pytest.fail(f"workers still hold (bias, version) {seen}, expected ({bias}, {version})")


@pytest.mark.parametrize("backend", SYNCED)
def test_every_worker_gets_the_initial_weights_and_each_update(backend):
    policy, linear = make_policy(bias=1.0)
    scheme = WeightSyncScheme.from_backend(backend, timeout=30.0)
    with collector_of(MultiSyncCollector, scheme, policy) as collector:
        batches = iter(collector)
        assert per_worker(next(batches)) == [(1.0, 0)] * NUM_WORKERS
        assert isinstance(scheme, TorchRLScheme)

        set_bias(linear, 2.0)  # an optimizer step
        collector.update_policy_weights_()
        wait_for_every_worker(batches, 2.0, 1)

        collector.update_policy_weights_(weights_with_bias(linear, 3.0))
        wait_for_every_worker(batches, 3.0, 2)
        sender = scheme.get_sender()  # its versions count the initial weights too: 1 + 2
        assert sender.version == 3
        assert sender.acked_versions == dict.fromkeys(range(NUM_WORKERS), 3)


@pytest.mark.timeout(90)  # far below the scheme's timeout: waiting it out fails the test
@pytest.mark.parametrize("backend", SYNCED)
def test_workers_whose_env_factory_fails_are_named_dead_with_their_error(backend):
    """The collector's workers die before they connect (their env factory raises an ImportError):
    the collector's constructor raises at once, naming each worker, its exit and its error."""
    policy, _ = make_policy()
    scheme = WeightSyncScheme.from_backend(backend, timeout=600.0)
    try:
        with pytest.raises(PeerDiedError) as caught:
            MultiSyncCollector(
                [make_env_without_its_package] * NUM_WORKERS,
                policy,
                frames_per_batch=NUM_WORKERS * 10,
                total_frames=-1,
                weight_sync_schemes={"policy": scheme},
            )
    finally:
        scheme.shutdown()
    message = str(caught.value)
    assert caught.value.workers == list(range(NUM_WORKERS))
    assert message.count("exited with code") == NUM_WORKERS
    assert "No module named 'an_env_package_that_is_not_installed'" in message
    assert "slow to start" not in message


def test_none_scheme_workers_keep_the_initial_weights():
    """``none`` under a collector: the initial weights still reach the workers (the collector
    sends them a policy without weights), updates move nothing and no version bumps."""
    policy, linear = make_policy(bias=1.0)
    scheme = WeightSyncScheme.from_backend("none")
    with collector_of(MultiSyncCollector, scheme, policy) as collector:
        batches = iter(collector)
        assert per_worker(next(batches)) == [(1.0, 0)] * NUM_WORKERS
        set_bias(linear, 2.0)
        collector.update_policy_weights_()
        collector.update_policy_weights_(weights_with_bias(linear, 3.0))
        for _ in range(2):
            assert per_worker(next(batches)) == [(1.0, 0)] * NUM_WORKERS


@pytest.mark.parametrize("backend", SYNCED)
def test_async_collector_batches_hold_one_version_each(backend):
    """MultiAsyncCollector: workers collect while the trainer updates; every rollout acts with
    one version's weights and records that version, and the new version arrives."""
    policy, linear = make_policy(bias=1.0)
    scheme = WeightSyncScheme.from_backend(backend, timeout=30.0)
    with collector_of(MultiAsyncCollector, scheme, policy) as collector:
        batches = iter(collector)
        latest = 0
        for version in (1, 2, 3):
            set_bias(linear, 1.0 + version)
            collector.update_policy_weights_()
            for _ in range(4 * NUM_WORKERS):
                bias, got = rollout_weights(next(batches))
                assert bias == 1.0 + got  # the weights and the version recorded agree
                latest = max(latest, got)
                if got == version:
                    break
            assert latest == version, f"no rollout of version {version} arrived"


@pytest.mark.parametrize("backend", SYNCED)
def test_a_killed_worker_is_a_named_error_not_a_hang(backend):
    policy, linear = make_policy(bias=1.0)
    scheme = WeightSyncScheme.from_backend(backend, timeout=30.0)  # start-up included
    with collector_of(MultiSyncCollector, scheme, policy) as collector:
        next(iter(collector))
        victim = collector.procs[0]
        victim.kill()
        victim.join(timeout=10)
        set_bias(linear, 2.0)
        with pytest.raises((PeerDiedError, SyncTimeoutError)) as raised:
            collector.update_policy_weights_()
        assert 0 in raised.value.workers
        assert "worker" in str(raised.value) and "policy" in str(raised.value)


def test_single_process_collector():
    """``Collector`` runs the policy in the trainer's process: ``none`` works as in TorchRL;
    the process schemes refuse, naming what they need (as TorchRL's own do)."""
    policy, _ = make_policy()
    collector = Collector(
        make_env,
        policy,
        frames_per_batch=10,
        total_frames=-1,
        weight_sync_schemes={"policy": WeightSyncScheme.from_backend("none")},
    )
    try:
        next(iter(collector))
        collector.update_policy_weights_()
    finally:
        collector.shutdown()
    for backend in SYNCED:
        with pytest.raises(ValueError, match="pipe"):
            Collector(
                make_env,
                policy,
                frames_per_batch=10,
                total_frames=-1,
                weight_sync_schemes={"policy": WeightSyncScheme.from_backend(backend)},
            )
