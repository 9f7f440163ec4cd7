"""The ray scheme on a real local Ray instance (one per module: starting Ray costs seconds), with
real Ray actors as workers: versions, zero-copy adoption from the object store, refusals, dead
and silent actors, the number of versions the object store holds, shutdown."""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Iterator

import pytest
import torch

from weightsync import (
    PeerDiedError,
    RayWeightSyncScheme,
    SyncTimeoutError,
    WeightSyncScheme,
    WorkerRejectedError,
)

ray = pytest.importorskip("ray")
from tests.helpers.ray_actors import SyncedModel  # noqa: E402  (imports ray)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.xdist_group("ray_scheme")]

TIMEOUT = 60.0  # generous: a loaded CI machine
STARTUP = 300.0  # an actor is a process that imports torch: minutes on a machine loaded 10x
make_model = functools.partial(torch.nn.Linear, 128, 128)  # 64 KiB: worth adopting in place


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    # No token: ~/.ray/auth_token is shared by every Ray instance of this user on the machine,
    # and one started meanwhile may replace it under ours.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 << 20)
    try:
        yield
    finally:
        ray.shutdown()
        os.environ.pop("RAY_AUTH_MODE", None)


@pytest.fixture(scope="module")
def actors(ray_instance: None) -> list:
    """Two workers, shared by the tests (each joins a fresh scheme)."""
    actor_cls = ray.remote(num_cpus=0)(SyncedModel)
    handles = [actor_cls.remote(make_model) for _ in range(2)]
    ray.get([a.__ray_ready__.remote() for a in handles], timeout=STARTUP)
    return handles


def connected(policy: torch.nn.Module, actors: list, **kwargs) -> RayWeightSyncScheme:
    scheme = RayWeightSyncScheme(timeout=TIMEOUT, **kwargs)
    scheme.init_on_sender("policy", model=policy, actors=actors)
    joined = [a.join.remote(scheme, w) for w, a in enumerate(actors)]
    scheme.connect()
    assert ray.get(joined, timeout=TIMEOUT) == [1] * len(actors)
    return scheme


def step(policy: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)


def test_every_actor_adopts_each_version_from_the_object_store(actors: list) -> None:
    assert isinstance(WeightSyncScheme.from_backend("ray"), RayWeightSyncScheme)
    policy = make_model()
    scheme = connected(policy, actors)
    try:
        for _ in range(3):
            step(policy)
            scheme.send_async()
            scheme.wait_async()
        assert ray.get([a.receive.remote() for a in actors]) == [4, 4]
        # Adoptions reach the trainer's board a moment after receive() returns.
        assert wait_for(lambda: scheme.get_sender().acked_versions == {0: 4, 1: 4}, within=10.0)
        for actor in actors:
            held = ray.get(actor.weights.remote())
            assert all(torch.equal(held[k], v) for k, v in policy.state_dict().items())
            assert ray.get(actor.reads_object_store.remote())  # adopted without a copy
    finally:
        scheme.shutdown()
    assert ray.get([a.closed.remote() for a in actors]) == [True, True]


def test_given_weights_reach_the_actors_and_never_the_trainers_model(actors: list) -> None:
    """``send(weights=...)`` while the trainer's model lives in the staging buffer: the given
    weights are staged apart, so the model keeps its own (and the next plain send sends them)."""
    policy = make_model()
    scheme = connected(policy, actors)
    try:
        own = {k: v.clone() for k, v in policy.state_dict().items()}
        other = {k: v + 5.0 for k, v in own.items()}
        scheme.send(weights=other)
        assert all(torch.equal(policy.state_dict()[k], v) for k, v in own.items())
        ray.get([a.receive.remote() for a in actors])
        for actor in actors:
            held = ray.get(actor.weights.remote())
            assert all(torch.equal(held[k], v) for k, v in other.items())
        scheme.send()
        ray.get([a.receive.remote() for a in actors])
        for actor in actors:
            held = ray.get(actor.weights.remote())
            assert all(torch.equal(held[k], v) for k, v in own.items())
    finally:
        scheme.shutdown()


def test_a_refusal_is_named_by_worker_and_leaves_its_model_as_it_was(actors: list) -> None:
    policy = make_model()
    scheme = connected(policy, actors)
    try:
        before = ray.get(actors[1].weights.remote())
        wrong = {k: torch.zeros(3) for k in policy.state_dict()}  # every shape wrong
        scheme.send(weights=wrong, worker_ids=[1])  # the worker holds it, then refuses it
        assert ray.get(actors[1].receive.remote()) == 1
        with pytest.raises(WorkerRejectedError, match=r"worker\(s\) \[1\]") as err:
            scheme.send()
        assert err.value.workers == [1]
        after = ray.get(actors[1].weights.remote())
        assert all(torch.equal(before[k], after[k]) for k in before)
        scheme.send()  # the refusal was reported once: the scheme goes on
        assert ray.get([a.receive.remote() for a in actors]) == [4, 4]
    finally:
        ray.get([a.leave.remote() for a in actors])
        scheme.shutdown()


def test_a_silent_actor_is_named_after_the_timeout_and_a_dead_one_at_once(actors: list) -> None:
    spare = ray.remote(num_cpus=0)(SyncedModel).remote(make_model)
    ray.get(spare.__ray_ready__.remote(), timeout=STARTUP)
    policy = make_model()
    scheme = RayWeightSyncScheme(timeout=TIMEOUT)
    scheme.init_on_sender("policy", model=policy, actors=[*actors, spare])
    joined = [a.join.remote(scheme, w) for w, a in enumerate(actors)]  # the spare never joins
    sender = scheme.get_sender()
    try:
        with pytest.raises(SyncTimeoutError, match=r"worker 2 \(Ray actor \w+\) did not take"):
            sender.connect(timeout=1.0)
        ray.get(joined, timeout=TIMEOUT)
        ray.kill(spare)
        with pytest.raises(PeerDiedError, match=r"worker 2 \(Ray actor \w+\) died") as err:
            scheme.send()
        assert err.value.workers == [2]
        sender.remove_workers(err.value.workers)
        scheme.send()
        assert set(sender.acked_versions) == {0, 1}
    finally:
        ray.get([a.leave.remote() for a in actors])
        scheme.shutdown()


def test_the_object_store_holds_a_bounded_number_of_versions(actors: list) -> None:
    """Ray deletes released objects in batches (about once a second): while the trainer goes on
    sending, the store drops the versions it released, and once it stops the store holds only
    the versions in use. The trainer sends until a deletion is seen (Ray's pace, not the test's,
    decides how many sends that takes; a fast loop sends many within one batch)."""
    wide = functools.partial(torch.nn.Linear, 512, 512)  # 1 MiB per version
    policy = wide()
    ray.get([a.rebuild.remote(wide) for a in actors])
    scheme = connected(policy, actors)
    peak, dropped, version = 0, False, 1
    deadline = time.monotonic() + TIMEOUT
    try:
        while not dropped and time.monotonic() < deadline:
            version += 1
            step(policy)
            scheme.send()
            if version % 3 == 0:  # workers adopt now and then, as busy workers do
                ray.get([a.receive.remote() for a in actors])
            held_now = objects_in_store()
            dropped = held_now < peak  # only a deletion lowers the count while sends go on
            peak = max(peak, held_now)
        ray.get([a.receive.remote() for a in actors])
        adopted = {k: v.clone() for k, v in policy.state_dict().items()}
        settled = wait_for(lambda: objects_in_store() <= 3, within=10.0)
        held = ray.get(actors[0].weights.remote())  # the newest version, released by the trainer
        assert all(torch.equal(held[k], v) for k, v in adopted.items())
    finally:
        ray.get([a.leave.remote() for a in actors])
        scheme.shutdown()
    assert dropped, f"no released version was deleted during {version - 1} sends ({TIMEOUT:g} s)"
    assert settled  # the newest version and the one the workers use


def objects_in_store() -> int:
    """How many objects Ray's object store holds now, over all nodes. Asked through the driver's
    own state accessor, connected once (a new one per call may not connect in time on a heavily
    loaded machine)."""
    from ray._private import internal_api, state

    summary = internal_api.store_stats_summary(internal_api.get_memory_info_reply(state.state))
    return int(re.search(r"(\d+) objects", summary).group(1))


def wait_for(condition, within: float) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
