"""The TorchRL compatibility surface (``weightsync/torchrl.py`` and the names and arguments TorchRL
users pass), tested without torchrl: TorchRL's calls, made the way its collectors make them."""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from tensordict import TensorDict
from torch import nn

from tests.helpers.collector_workers import collector_worker, meta_linear
from tests.helpers.inprocess import ThreadWorker, connected_pair
from tests.helpers.workers import REPLY_S
from weightsync import (
    DistributedWeightSyncScheme,
    MPTransport,
    MultiProcessWeightSyncScheme,
    NoWeightSyncScheme,
    SharedMemWeightSyncScheme,
    SyncTimeoutError,
    WeightStrategy,
    WeightSyncScheme,
    WorkerRejectedError,
    register_with_torchrl,
)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("shared", SharedMemWeightSyncScheme),
        ("thread", SharedMemWeightSyncScheme),
        ("process", MultiProcessWeightSyncScheme),
        ("multiprocessing", MultiProcessWeightSyncScheme),
        ("direct", NoWeightSyncScheme),
        ("distributed", DistributedWeightSyncScheme),
    ],
)
def test_from_backend_accepts_torchrl_names(name, cls):
    assert type(WeightSyncScheme.from_backend(name)) is cls


def test_torchrl_constructor_arguments():
    assert MultiProcessWeightSyncScheme(strategy="tensordict", sync=True).sync is True
    shared = SharedMemWeightSyncScheme(strategy="tensordict", sync=False, per_worker_weights=True)
    assert (shared.sync, shared.per_worker_weights) == (False, True)
    # TorchRL's ``backend`` is the torch backend; the registry name is ``backend_name``
    gloo = DistributedWeightSyncScheme(backend="gloo", sync=True)
    assert (gloo.backend, gloo.backend_name) == ("gloo", "distributed")
    assert DistributedWeightSyncScheme(backend="nccl").backend == "nccl"
    assert DistributedWeightSyncScheme().backend is None
    with pytest.raises(ValueError, match="backend='mpi' is not one of"):
        DistributedWeightSyncScheme(backend="mpi")
    with pytest.raises(TypeError, match="strategy='state_dict'"):
        SharedMemWeightSyncScheme("state_dict")  # TorchRL's positional order


def test_strategy_equals_its_name_and_offers_strategy_str():
    scheme = MultiProcessWeightSyncScheme(strategy="tensordict")
    assert scheme.strategy == "tensordict" and scheme.strategy != "state_dict"
    assert scheme.strategy == WeightStrategy("tensordict")
    assert scheme.strategy_str == "tensordict"


def test_apply_weights_out_of_place_points_the_module_at_the_weights():
    module, source = nn.Linear(3, 2), nn.Linear(3, 2)
    weight_param = module.weight
    weights = WeightStrategy("state_dict").extract_weights(source)
    WeightStrategy().apply_weights(module, weights, inplace=False)
    assert module.weight is weight_param  # the same Parameter, now a view of the given tensor
    assert module.weight.data_ptr() == source.weight.data_ptr()
    WeightStrategy().apply_weights(module, weights, True)  # TorchRL's positional form
    with pytest.raises(ValueError, match=r"inplace=False needs an nn\.Module"):
        WeightStrategy().apply_weights(dict(weights), weights, inplace=False)


def test_lifecycle_properties_and_setters():
    scheme = MultiProcessWeightSyncScheme()
    assert not scheme.initialized_on_sender and not scheme.initialized_on_receiver
    trainer_end, worker_end = mp.Pipe()
    model = nn.Linear(3, 2)
    scheme.init_on_sender("policy", model=model, pipes=[trainer_end])
    assert scheme.initialized_on_sender and not scheme.synchronized_on_sender
    assert scheme.model is model and scheme.context is None
    other, context = nn.Linear(3, 2), SimpleNamespace()
    scheme.model, scheme.context = other, context
    assert scheme.model is other and scheme.context is context
    scheme.shutdown()
    worker_end.close()


def test_a_meta_model_is_refused_by_name_and_its_version_stays_honest():
    """Without materialize_meta an update to a model without storage is refused (never a
    silent no-op that reports version 1); with it, the model is given storage and updated."""
    for materialize, expect_version in ((False, 0), (True, 1)):
        trainer_end, worker_end = mp.Pipe()
        trainer = MultiProcessWeightSyncScheme(timeout=5.0)
        worker = MultiProcessWeightSyncScheme(timeout=5.0, materialize_meta=materialize)
        source = nn.Linear(3, 2)
        trainer.init_on_sender("policy", model=source, pipes=[trainer_end])
        worker.init_on_receiver("policy", model=meta_linear(), pipe=worker_end)
        receiving = threading.Thread(target=worker.receive, args=(5.0,))
        receiving.start()
        try:
            if materialize:
                trainer.send()
                assert torch.equal(worker.model.weight, source.weight)
            else:
                with pytest.raises(WorkerRejectedError, match="meta device"):
                    trainer.send()
        finally:
            receiving.join(timeout=10)
            assert worker.get_receiver().version == expect_version
            trainer.shutdown()
            worker.shutdown()


def test_legacy_worker_applying_received_weights_acknowledges_them():
    """A seed-era worker: weights from the legacy transport's receive_weights, applied with
    WeightReceiver.apply_weights. The trainer's legacy send_weights returns (no time-out)."""
    trainer_end, worker_end = mp.Pipe()
    scheme = MultiProcessWeightSyncScheme(timeout=5.0)
    worker_model = nn.Linear(3, 2)
    scheme.init_on_worker("policy", model=worker_model, pipe=worker_end)
    transport = scheme.create_transport(worker_end)
    source = nn.Linear(3, 2)
    sender = threading.Thread(
        target=MPTransport(trainer_end, timeout=5.0).send_weights,
        args=("policy", WeightStrategy("state_dict").extract_weights(source)),
    )
    sender.start()
    model_id, weights = transport.receive_weights(timeout=5.0)
    scheme.get_receiver().apply_weights(weights)
    sender.join(timeout=5.0)
    assert not sender.is_alive() and model_id == "policy"
    assert torch.equal(worker_model.weight, source.weight)


def test_a_worker_reading_through_a_plain_mptransport_acknowledges_what_it_applies():
    """TorchRL parity: ``init_on_worker(pipe=...)``, weights from a plain ``MPTransport(pipe)``
    (not the scheme's ``create_transport``), applied with ``get_receiver().apply_weights``:
    the trainer's ``send_weights`` returns, twice in a row (each version acknowledged once)."""
    trainer_end, worker_end = mp.Pipe()
    scheme = MultiProcessWeightSyncScheme(timeout=5.0)
    worker_model = nn.Linear(3, 2)
    scheme.init_on_worker("policy", pipe=worker_end, model=worker_model)
    trainer = MPTransport(trainer_end, timeout=5.0)
    for bias in (1.0, 2.0):
        source = nn.Linear(3, 2)
        nn.init.constant_(source.bias, bias)
        sender = threading.Thread(
            target=trainer.send_weights,
            args=("policy", WeightStrategy("state_dict").extract_weights(source)),
        )
        sender.start()
        _, weights = MPTransport(worker_end).receive_weights(timeout=5.0)
        scheme.get_receiver().apply_weights(weights)
        sender.join(timeout=10.0)
        assert not sender.is_alive()
        assert torch.equal(worker_model.bias, source.bias)
    assert not trainer_end.poll(0.1)  # no second, unasked acknowledgement


def test_init_refuses_an_unknown_keyword_at_once_naming_the_accepted_ones():
    trainer_end, worker_end = mp.Pipe()
    scheme = MultiProcessWeightSyncScheme()
    with pytest.raises(
        TypeError,
        match=r"\['pipe'\]; it accepts \['ctx', 'device_map_fn', 'devices', 'model', "
        r"'num_workers', 'params_map', 'pipes', 'processes', 'weights'\]",
    ):
        scheme.init_on_sender("policy", model=nn.Linear(3, 2), pipe=trainer_end)
    assert scheme.role is None  # nothing was set up
    with pytest.raises(
        TypeError, match=r"\['modle'\]; it accepts \['model', 'pipe', 'worker_id', 'worker_idx'\]"
    ):
        scheme.init_on_receiver("policy", modle=nn.Linear(3, 2), pipe=worker_end)
    with pytest.raises(TypeError, match=r"\['bind', 'model', 'pipe', 'worker_id', 'worker_idx'\]"):
        DistributedWeightSyncScheme().init_on_receiver("policy", worker=1)
    NoWeightSyncScheme().init_on_sender("policy", anything=1)  # the reference API: ignored
    trainer_end.close()
    worker_end.close()


def test_shared_mem_policy_weights_map_model_ids_to_tensordicts():
    """TorchRL's ``policy_weights={model_id: TensorDict}`` registers each model id: a legacy
    transport without auto-registration publishes them."""
    policy, critic = nn.Linear(3, 2), nn.Linear(2, 1)
    weights = {
        name: TensorDict.from_module(m) for name, m in (("policy", policy), ("critic", critic))
    }
    scheme = SharedMemWeightSyncScheme(policy_weights=weights, auto_register=False)
    assert {k: id(v) for k, v in scheme.weights_by_model.items()} == {
        k: id(v) for k, v in weights.items()
    }
    transport = scheme.create_transport(None)
    try:
        transport.send_weights("critic", TensorDict.from_module(critic))
        assert set(transport.rings) == {"critic"}
    finally:
        transport.close()
    own = TensorDict.from_module(policy)  # one model's own weights, as before
    assert SharedMemWeightSyncScheme(policy_weights=own).weights_by_model[None] is own


def test_legacy_trainer_side_transport_names_the_worker_when_it_times_out():
    trainer_end, worker_end = mp.Pipe()
    with pytest.raises(SyncTimeoutError, match=r"^the worker did not acknowledge"):
        MPTransport(trainer_end, timeout=0.1).send_weights("policy", {"w": torch.ones(1)})
    worker_end.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["pipe", "shared-mem", "none"])
def test_the_collector_protocol_with_spawned_workers(backend, procs):
    """init_on_sender(ctx=...) builds the channels, which reach each worker inside the pickled
    scheme; the worker's meta policy gets the initial weights; later sends arrive through the
    receiving thread, which bumps the worker collector's policy version once per update."""
    num_workers = 2
    policy = nn.Linear(3, 2)
    collector = SimpleNamespace(num_workers=num_workers, get_model=lambda model_id: policy)
    scheme = WeightSyncScheme.from_backend(backend, timeout=60.0)
    scheme.init_on_sender(model_id="policy", context=collector, ctx=procs.ctx)
    controls = [procs.pipe() for _ in range(num_workers)]
    for i, (_, worker_ctl) in enumerate(controls):
        procs.start(collector_worker, scheme, i, worker_ctl)
    scheme.connect()
    synced = backend != "none"

    def ask_all() -> list:
        for ctl, _ in controls:
            ctl.send("report")
        return [
            ctl.recv() if ctl.poll(REPLY_S) else pytest.fail("worker silent") for ctl, _ in controls
        ]

    initial = {k: v.clone() for k, v in policy.state_dict().items()}
    for state, version, policy_version in ask_all():
        assert all(torch.equal(state[k], initial[k]) for k in initial)
        assert (version, policy_version) == ((1, 0) if synced else (0, 0))

    with torch.no_grad():
        policy.weight.add_(1.0)
    scheme.send()
    want = policy.state_dict() if synced else initial
    for state, version, policy_version in ask_all():
        assert all(torch.equal(state[k], want[k]) for k in want)
        assert (version, policy_version) == ((2, 1) if synced else (0, 0))

    for ctl, _ in controls:  # the receiving thread has ended before the worker finalises
        ctl.send("stop")
        assert ctl.poll(30) and ctl.recv() == ("threads", [])
    scheme.shutdown()


def test_a_pickled_scheme_is_not_synchronised_before_its_own_connect():
    """TorchRL skips a worker's connect() when ``synchronized_on_receiver`` already says True."""
    scheme = NoWeightSyncScheme()
    scheme.init_on_sender("policy")
    scheme.connect()
    assert scheme.synchronized_on_sender
    copy = pickle.loads(pickle.dumps(scheme))
    copy.init_on_receiver(model_id="policy", model=nn.Linear(3, 2), worker_idx=0)
    assert copy.initialized_on_receiver and not copy.synchronized_on_receiver
    assert copy.worker_idx == 0
    copy.connect(worker_idx=0)
    assert copy.synchronized_on_receiver
    scheme.shutdown()
    assert not scheme.synchronized_on_sender and not scheme.initialized_on_sender


def test_importing_weightsync_does_not_import_torchrl():
    probe = "import sys, weightsync; print('torchrl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_register_with_torchrl_makes_schemes_torchrl_schemes_or_names_the_extra():
    if importlib.util.find_spec("torchrl") is None:
        with pytest.raises(ImportError, match=r"weightsync\[torchrl\]"):
            register_with_torchrl()
        return
    from torchrl.weight_update import WeightSyncScheme as TorchRLScheme

    register_with_torchrl()
    assert isinstance(SharedMemWeightSyncScheme(), TorchRLScheme)


def test_shared_mem_with_sync_returns_once_every_worker_holds_the_version():
    """TorchRL's ``sync=True``: a shared-mem send waits until the worker adopted the snapshot; a
    worker that never picks it up is a SyncTimeoutError naming it. Without sync it returns once
    the snapshot is published."""
    pair = connected_pair("shared-mem", nn.Linear(3, 2), nn.Linear(3, 2), sync=True, timeout=0.5)
    try:
        with pytest.raises(SyncTimeoutError, match=r"worker\(s\) \[0\] did not adopt version 2"):
            pair.trainer.send()
    finally:
        pair.close()
    pair = connected_pair("shared-mem", nn.Linear(3, 2), nn.Linear(3, 2), timeout=0.5)
    try:
        pair.trainer.send()  # published; the worker adopts it at its next receive()
        assert pair.trainer.get_sender().acked_versions == {0: 1}
    finally:
        pair.close()

    trainer_end, worker_end = mp.Pipe()
    scheme = SharedMemWeightSyncScheme(strategy="tensordict", sync=True, timeout=5.0)
    source = nn.Linear(3, 2)
    scheme.init_on_sender("policy", model=source, pipes=[trainer_end])
    worker = ThreadWorker(scheme, nn.Linear(3, 2), worker_end)
    try:
        scheme.connect()
        with torch.no_grad():
            source.weight.add_(1.0)
        scheme.send()
        assert scheme.get_sender().acked_versions == {0: 2}  # taken up before send returned
        assert worker.wait_for(2) == 2
        assert torch.equal(worker.model.weight, source.weight)
    finally:
        worker.stop()
        scheme.shutdown()
        trainer_end.close()


def test_init_on_sender_takes_torchrl_params_map():
    """``params_map={worker_idx: weights}`` gives the number of workers and the initial weights."""
    trainer_end, worker_end = mp.Pipe()
    source = nn.Linear(3, 2)
    scheme = MultiProcessWeightSyncScheme(strategy="tensordict", timeout=5.0)
    weights = WeightStrategy("tensordict").extract_weights(source)
    scheme.init_on_sender(model_id="policy", params_map={0: weights}, pipes=[trainer_end])
    worker = ThreadWorker(scheme, nn.Linear(3, 2), worker_end)
    try:
        scheme.connect()
        assert worker.wait_for(1) == 1
        assert torch.equal(worker.model.weight, source.weight)
    finally:
        worker.stop()
        scheme.shutdown()
        trainer_end.close()
    with pytest.raises(ValueError, match="num_workers=2 but 1 pipes"):
        MultiProcessWeightSyncScheme().init_on_sender(
            model_id="policy", params_map={0: weights, 1: weights}, pipes=[trainer_end]
        )
