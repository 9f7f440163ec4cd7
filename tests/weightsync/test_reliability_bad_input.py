"""Bad weights and API misuse: each is refused with an error that names the problem, and nothing
is lost or corrupted. The README's troubleshooting section lists every case here.

Weights that do not fit are sent to real spawned workers (pipe and shared-mem); after each
refusal every worker still holds the last good version, unchanged, the sender's version did not
move unless an update actually went out, and the next good update reaches every worker.
"""

from __future__ import annotations

import multiprocessing
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict

from tests.helpers.fleet import NUM_WORKERS, Fleet
from tests.helpers.inprocess import connected_pair
from tests.helpers.models import make_model, perturb, state_of
from weightsync import (
    ModelGroup,
    ModelPathError,
    MPTransport,
    NonFiniteWeightsError,
    SyncTimeoutError,
    WeightMismatchError,
    WeightStrategy,
    WeightSyncError,
    WeightSyncScheme,
    WorkerRejectedError,
)


# ------------------------------------------------------------------ bad weights, real workers
@pytest.fixture(scope="module", params=["pipe", "shared-mem"])
def fleet(request):
    fleet = Fleet(request.param)
    yield fleet
    fleet.close()


def _good() -> dict:
    return state_of(make_model(0))


def _without(key):
    return lambda sd: {k: v for k, v in sd.items() if k != key}


def _with(key, value):
    return lambda sd: {**sd, key: value}


def _replaced(key, fn):
    return lambda sd: {**sd, key: fn(sd[key])}


def _poisoned(key, value):
    def poison(sd):
        bad = sd[key].clone()
        bad.view(-1)[0] = value
        return {**sd, key: bad}

    return poison


def _as_tensordict(sd):
    td = WeightStrategy("tensordict").extract_weights(sd)
    td.set(("head", "weight"), torch.zeros(5, 8))
    return td


# (name, how to make the bad weights from a good state_dict, error type, fragments of the message)
BAD_WEIGHTS = [
    ("missing key", _without("head.bias"), WeightSyncError, ["missing key 'head.bias'"]),
    (
        "extra key",
        _with("head.scale", torch.ones(2)),
        WeightSyncError,
        ["unexpected key 'head.scale'"],
    ),
    (
        "wrong shape",
        _replaced("head.weight", lambda t: torch.zeros(3, 8)),
        WeightSyncError,
        ["'head.weight'", "expected shape (2, 8) float32", "found shape (3, 8) float32"],
    ),
    (
        "wrong dtype",
        _replaced("head.weight", lambda t: t.double()),
        WeightSyncError,
        ["'head.weight'", "expected shape (2, 8) float32", "found shape (2, 8) float64"],
    ),
    (
        "float counter",
        _replaced("encoder.1.num_batches_tracked", lambda t: t.float()),
        WeightSyncError,
        ["'encoder.1.num_batches_tracked'", "int64", "found shape () float32"],
    ),
    (
        "tensordict of the wrong shape",
        _as_tensordict,
        WeightSyncError,
        ["'head.weight'", "found shape (5, 8)"],
    ),
    (
        "another model's state_dict",
        lambda sd: torch.nn.Linear(8, 2).state_dict(),
        WeightSyncError,
        ["missing key 'encoder.0.weight'", "unexpected key 'weight'", "unexpected key 'bias'"],
    ),
    (
        "another model's tensordict",
        lambda sd: WeightStrategy("tensordict").extract_weights(
            torch.nn.Sequential(torch.nn.Linear(8, 2))
        ),
        WeightSyncError,
        ["missing key 'head.weight'", "unexpected key '0.weight'"],
    ),
    (
        "tensordict nested one level too deep",
        lambda sd: TensorDict({"policy": WeightStrategy("tensordict").extract_weights(sd)}),
        WeightSyncError,
        ["missing key 'head.weight'", "unexpected key 'policy.head.weight'"],
    ),
    (
        "NaN",
        _poisoned("head.weight", float("nan")),
        NonFiniteWeightsError,
        ["NaN/inf", "'head.weight'", "reject_non_finite=False"],
    ),
    (
        "inf in a buffer",
        _poisoned("encoder.1.running_var", float("inf")),
        NonFiniteWeightsError,
        ["'encoder.1.running_var'"],
    ),
    (
        "model path that does not resolve",
        lambda sd: 'models["critic"]',
        ModelPathError,
        ['models["critic"]', "does not resolve", "'critic'"],
    ),
    ("wrong container type", lambda sd: list(sd.values()), ValueError, ["list", "TensorDict"]),
    (
        "non-tensor state_dict entry",
        _with("head.weight", [[0.0] * 8] * 2),
        TypeError,
        ["'head.weight'", "list", "not a tensor"],
    ),
]


@pytest.mark.xdist_group("bad_input_fleet")  # the module-scoped fleet, spawned once
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("name", "make_bad", "error", "fragments"), BAD_WEIGHTS, ids=[c[0] for c in BAD_WEIGHTS]
)
def test_weights_that_do_not_fit_are_refused_and_workers_keep_theirs(
    fleet, name, make_bad, error, fragments
):
    version, state = fleet.sender.version, state_of(fleet.model)
    with pytest.raises(error) as info:
        fleet.scheme.send(make_bad(_good()))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{name}: {fragment!r} not in {message!r}"
    if isinstance(info.value, WorkerRejectedError):  # refused by the workers (pipe)
        assert info.value.workers == list(range(NUM_WORKERS))
        assert "'policy'" in message
        assert fleet.sender.version == version + 1  # it went out; every worker said no
    else:  # refused in the trainer before anything moved
        assert fleet.sender.version == version, "a refused update spent a version"
    if isinstance(info.value, WeightMismatchError):
        assert "'policy'" in message and "nothing was applied" in message
    fleet.assert_workers_hold(version, state)  # exactly as they were
    assert set(fleet.sender.acked_versions.values()) == {version}

    perturb(fleet.model, 1)  # and still usable: the next good update reaches every worker
    fleet.scheme.send()
    fleet.assert_workers_hold(fleet.sender.version, state_of(fleet.model))


# ----------------------------------------------------------------------- API misuse, real workers
@pytest.mark.xdist_group("bad_input_fleet")  # the module-scoped fleet, spawned once
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_misused_sends_are_refused_and_change_nothing(fleet):
    sender, scheme = fleet.sender, fleet.scheme
    version, state = sender.version, state_of(fleet.model)

    with pytest.raises(RuntimeError, match="with no send pending"):
        scheme.wait_async()
    bad_ids = [7] if fleet.backend == "pipe" else [0]
    with pytest.raises(ValueError, match=r"\[7\]" if fleet.backend == "pipe" else "subset"):
        scheme.send(worker_ids=bad_ids)
    assert sender.version == version
    fleet.assert_workers_hold(version, state)

    perturb(fleet.model, 1)
    scheme.send_async()
    with pytest.raises(RuntimeError, match=f"version {version + 1} .* still pending"):
        scheme.send_async()
    scheme.wait_async()  # the first send is intact and completes
    assert sender.version == version + 1
    fleet.assert_workers_hold(version + 1, state_of(fleet.model))


# ------------------------------------------------------------------------- API misuse, in-process
def _pipes(n=1):
    ends = [multiprocessing.Pipe() for _ in range(n)]
    return [a for a, _ in ends], [b for _, b in ends], ends


def _close(ends):
    for a, b in ends:
        a.close()
        b.close()


MISUSE = [
    (
        "send before init_on_sender",
        lambda: WeightSyncScheme.from_backend("pipe").send(),
        RuntimeError,
        "init_on_sender",
    ),
    (
        "receive before init_on_receiver",
        lambda: WeightSyncScheme.from_backend("shared-mem").receive(),
        RuntimeError,
        "init_on_worker",
    ),
    (
        "unknown backend",
        lambda: WeightSyncScheme.from_backend("carrier-pigeon"),
        ValueError,
        "unknown weight-sync backend 'carrier-pigeon'",
    ),
    (
        "unknown strategy",
        lambda: WeightSyncScheme.from_backend("pipe", strategy="json"),
        ValueError,
        "extract_as='json'",
    ),
    (
        "timeout of zero",
        lambda: WeightSyncScheme.from_backend("pipe", timeout=0),
        ValueError,
        "timeout must be a positive number of seconds, got 0",
    ),
    (
        "negative timeout",
        lambda: WeightSyncScheme.from_backend("shared-mem", timeout=-1.5),
        ValueError,
        "got -1.5",
    ),
    (
        "timeout that is not a number",
        lambda: WeightSyncScheme.from_backend("pipe", timeout="10s"),
        ValueError,
        "'10s'",
    ),
    (
        "pipe scheme without pipes",
        lambda: WeightSyncScheme.from_backend("pipe").init_on_sender("policy", model=make_model()),
        ValueError,
        "one pipe per worker",
    ),
    (
        "worker without its pipe",
        lambda: WeightSyncScheme.from_backend("shared-mem").init_on_receiver(
            "policy", model=make_model()
        ),
        ValueError,
        "pipe=",
    ),
    (
        "invalid model id",
        lambda: WeightSyncScheme.from_backend("pipe").init_on_sender(
            "policy..head", context=SimpleNamespace(policy=make_model())
        ),
        ModelPathError,
        "'policy..head'",
    ),
    (
        "model id that does not resolve on the context",
        lambda: WeightSyncScheme.from_backend("pipe").init_on_sender(
            "agents[3].policy", context=SimpleNamespace(agents=[make_model()])
        ),
        ModelPathError,
        "step '[3]' failed",
    ),
    (
        "weights to extract from a list",
        lambda: WeightStrategy("state_dict").extract_weights([1, 2]),
        ValueError,
        "a list",
    ),
    (
        "ModelGroup member that is not a module",
        lambda: ModelGroup({"policy": make_model(), "critic": "critic.pt"}),
        TypeError,
        "'critic' is a str",
    ),
    (
        "register_shared_weights before init",
        lambda: WeightSyncScheme.from_backend("shared-mem").register_shared_weights(
            "policy", make_model().state_dict()
        ),
        RuntimeError,
        "init_on_sender",
    ),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "call", "error", "fragment"), MISUSE, ids=[m[0] for m in MISUSE])
def test_misuse_is_refused_with_an_error_that_names_it(name, call, error, fragment):
    with pytest.raises(error) as info:
        call()
    assert fragment in str(info.value), f"{name}: {fragment!r} not in {info.value}"


@pytest.mark.timeout(30)
def test_num_workers_that_contradict_the_pipes_is_refused():
    trainer_ends, _, ends = _pipes(2)
    try:
        scheme = WeightSyncScheme.from_backend("pipe")
        with pytest.raises(ValueError, match="num_workers=3 but 2 pipes"):
            scheme.init_on_sender("policy", model=make_model(), pipes=trainer_ends, num_workers=3)
    finally:
        _close(ends)


@pytest.mark.timeout(30)
def test_nothing_to_send_and_model_path_without_context_are_refused():
    trainer_ends, _, ends = _pipes(1)
    try:
        scheme = WeightSyncScheme.from_backend("pipe")
        scheme.init_on_sender("policy", pipes=trainer_ends)  # no model, no context
        with pytest.raises(ValueError, match="nothing to send for model 'policy'"):
            scheme.send()
        with pytest.raises(ValueError, match="needs a context"):
            scheme.send("policy.head")
        assert scheme.get_sender().version == 0
    finally:
        scheme.shutdown()
        _close(ends)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_buffers", [1, 0])  # 0 is refused too, not taken for the default
def test_too_few_snapshot_buffers_is_refused_before_anything_is_shared(num_buffers):
    trainer_ends, _, ends = _pipes(1)
    try:
        scheme = WeightSyncScheme.from_backend("shared-mem", num_buffers=num_buffers)
        scheme.init_on_sender("policy", model=make_model(), pipes=trainer_ends)
        with pytest.raises(
            ValueError, match=rf"num_buffers must be in \[2, 64\], got {num_buffers}"
        ):
            scheme.connect()
        assert scheme.get_sender().version == 0
    finally:
        scheme.shutdown()
        _close(ends)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", ["pipe", "shared-mem"])
def test_worker_whose_trainer_never_sends_times_out_naming_the_model(backend):
    _, worker_ends, ends = _pipes(1)
    try:
        scheme = WeightSyncScheme.from_backend(backend, timeout=0.2)
        model = make_model(1)
        before = state_of(model)
        scheme.init_on_receiver("critic", model=model, pipe=worker_ends[0])
        with pytest.raises(SyncTimeoutError, match=r"model 'critic' .* within 0.2 s"):
            scheme.connect()
        assert scheme.get_receiver().version == 0
        after = state_of(model)
        assert all(torch.equal(v, after[k]) for k, v in before.items() if torch.is_tensor(v))
    finally:
        _close(ends)


# ------------------------------------------------------------------------- timeouts, where given
INF = float("inf")
BAD_TIMEOUTS = [INF, -1, 0, float("nan"), "10s"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", ["pipe", "shared-mem", "none"])
@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_every_timeout_is_refused_where_it_is_given(backend, timeout):
    """The scheme's own, and each call's: a clear ValueError before anything waits or moves."""
    with pytest.raises(ValueError, match=r"timeout must be a positive number of seconds, got"):
        WeightSyncScheme.from_backend(backend, timeout=timeout)
    pair = connected_pair(backend, make_model(0), make_model(1))
    try:
        sender = pair.trainer.get_sender()
        version = sender.version
        for call in (
            lambda: pair.trainer.connect(timeout),
            lambda: sender.connect(timeout),
            lambda: pair.worker.connect(timeout),
        ):
            with pytest.raises(ValueError, match="timeout must be a positive number") as info:
                call()
            assert timeout != INF or "waiting forever is not supported" in str(info.value)
        pair.trainer.send_async()
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            pair.trainer.wait_async(timeout)
        pair.worker.receive(5.0)  # (a pipe worker answers only when it receives)
        pair.trainer.wait_async()  # the send itself is intact
        assert sender.version == version + 1
        if timeout != 0:  # a poll may look without waiting
            with pytest.raises(ValueError, match="timeout must be a non-negative number"):
                pair.worker.receive(timeout)
        else:
            pair.worker.receive(timeout)
    finally:
        pair.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_a_pipe_transports_timeouts_are_refused_where_given(timeout):
    trainer_ends, worker_ends, ends = _pipes(1)
    try:
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            MPTransport(trainer_ends[0], timeout=timeout, worker_id=0)
        if timeout != 0:
            with pytest.raises(ValueError, match="timeout must be a non-negative number"):
                MPTransport(worker_ends[0]).receive_weights(timeout)
    finally:
        _close(ends)
