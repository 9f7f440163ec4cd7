"""The legacy scheme API of TorchRL's reference page (``NoWeightSyncScheme``), one test per
documented behaviour, then the same calls on every scheme, and the misuse errors."""

from __future__ import annotations

import pickle
import threading
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from tensordict import TensorDict, TensorDictBase
from torch import nn

from tests.helpers.models import make_model
from weightsync import (
    MPTransport,
    MultiProcessWeightSyncScheme,
    NoWeightSyncScheme,
    SharedMemTransport,
    SharedMemWeightSyncScheme,
    TransportBackend,
    WeightReceiver,
    WeightSender,
    WeightStrategy,
    WeightSyncScheme,
)

BACKENDS = {
    "none": NoWeightSyncScheme,
    "pipe": MultiProcessWeightSyncScheme,
    "shared-mem": SharedMemWeightSyncScheme,
}


@pytest.fixture
def pipe():
    trainer_end, worker_end = mp.Pipe()
    yield trainer_end, worker_end
    trainer_end.close()
    worker_end.close()


# ------------------------------------------------------- NoWeightSyncScheme, per the reference page
class TestNoWeightSyncScheme:
    def test_default_strategy_is_state_dict(self):
        assert NoWeightSyncScheme().strategy.extract_as == "state_dict"
        assert NoWeightSyncScheme(strategy="tensordict").strategy.extract_as == "tensordict"

    def test_create_transport_returns_a_transport_that_moves_nothing(self, pipe):
        """As TorchRL 0.14's (API.md's "returns None" predates it): callers call its methods."""
        for target in (pipe[0], SimpleNamespace(pipe=pipe[1])):
            transport = NoWeightSyncScheme().create_transport(target)
            assert isinstance(transport, TransportBackend)
            transport.send_weights("policy", {"w": torch.ones(1)})
            assert transport.receive_weights(timeout=0.01) is None
            assert transport.check_connection()
        assert not pipe[1].poll(0)  # nothing went through the pipe

    def test_create_sender_and_create_receiver(self):
        scheme = NoWeightSyncScheme()
        assert isinstance(scheme.create_sender(), WeightSender)
        assert isinstance(scheme.create_receiver(), WeightReceiver)

    def test_get_sender_before_init_on_sender_raises(self):
        with pytest.raises(RuntimeError, match=r"init_on_sender\(\)"):
            NoWeightSyncScheme().get_sender()

    def test_get_receiver_before_init_on_worker_raises(self):
        with pytest.raises(RuntimeError, match=r"init_on_worker\(\)"):
            NoWeightSyncScheme().get_receiver()

    def test_init_on_sender_accepts_and_ignores_context_and_kwargs(self):
        scheme = NoWeightSyncScheme()
        context = object()  # no .pipes, no .policy, no get_model: not used
        scheme.init_on_sender("policy", context, num_workers=3, model="not a model", foo=1)
        assert isinstance(scheme.get_sender(), WeightSender)
        assert scheme.model_id == "policy"

    def test_init_on_worker_accepts_and_ignores_context_and_kwargs(self):
        scheme = NoWeightSyncScheme()
        scheme.init_on_worker("policy", object(), model=None, bar=2)
        receiver = scheme.get_receiver()
        assert isinstance(receiver, WeightReceiver)
        assert receiver.receive(timeout=0.01) is False

    def test_prepare_weights(self):
        scheme, strategy = NoWeightSyncScheme(), WeightStrategy("state_dict")
        model = nn.Linear(2, 2)
        assert scheme.prepare_weights(None, "policy", strategy) is None
        assert scheme.prepare_weights(model, "policy", strategy).keys() == {"weight", "bias"}

    def test_sends_move_no_bytes(self, pipe):
        trainer_end, worker_end = pipe
        trainer = NoWeightSyncScheme()
        trainer.init_on_sender("policy", model=make_model(), pipes=[trainer_end])
        worker = pickle.loads(pickle.dumps(trainer))
        worker.init_on_receiver("policy", model=make_model(1), pipe=worker_end)
        trainer.connect()
        worker.connect()
        for _ in range(3):
            trainer.send()
        trainer.send_async()
        trainer.wait_async()
        assert not worker_end.poll(0)  # nothing crossed the pipe
        assert worker.receive(timeout=0.01) is False and not worker.closed
        trainer.shutdown()  # the one message: "done", so that worker loops end
        assert worker.closed


# ------------------------------------------------------------------- every scheme, legacy calls
@pytest.mark.parametrize("backend", BACKENDS)
def test_from_backend_builds_each_scheme(backend):
    scheme = WeightSyncScheme.from_backend(backend, strategy="tensordict")
    assert type(scheme) is BACKENDS[backend]
    assert scheme.strategy.extract_as == "tensordict"


def test_from_backend_with_an_unknown_name_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown weight-sync backend 'zmq'; available: \[.*'none'"
    ):
        WeightSyncScheme.from_backend("zmq")


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unknown_strategy_is_a_value_error(backend):
    with pytest.raises(ValueError, match="extract_as='flat'"):
        WeightSyncScheme.from_backend(backend, strategy="flat")


@pytest.mark.parametrize("backend", BACKENDS)
def test_get_sender_and_receiver_before_init(backend):
    scheme = BACKENDS[backend]()
    with pytest.raises(RuntimeError, match=r"init_on_sender\(\)"):
        scheme.get_sender()
    with pytest.raises(RuntimeError, match=r"init_on_worker\(\)"):
        scheme.get_receiver()


@pytest.mark.parametrize("backend", ["pipe", "shared-mem"])
def test_a_sender_has_no_receiver_and_a_worker_no_sender(backend, pipe):
    trainer = BACKENDS[backend]()
    trainer.init_on_sender("policy", model=nn.Linear(2, 2), pipes=[pipe[0]])
    with pytest.raises(RuntimeError, match=r"init_on_worker\(\)"):
        trainer.get_receiver()
    worker = BACKENDS[backend]()
    worker.init_on_worker("policy", model=nn.Linear(2, 2), pipe=pipe[1])
    with pytest.raises(RuntimeError, match=r"init_on_sender\(\)"):
        worker.get_sender()


def test_create_transport_of_each_scheme(pipe):
    assert isinstance(MultiProcessWeightSyncScheme().create_transport(pipe[0]), MPTransport)
    transport = SharedMemWeightSyncScheme().create_transport(pipe[0])
    assert isinstance(transport, SharedMemTransport) and len(transport.links) == 1
    context = SimpleNamespace(pipe=pipe[1])
    assert MultiProcessWeightSyncScheme().create_transport(context).pipe is pipe[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_on_worker_is_init_on_receiver(backend, pipe):
    scheme = BACKENDS[backend]()
    scheme.init_on_worker("policy", model=nn.Linear(2, 2), pipe=pipe[1])
    assert scheme.role == "receiver" and isinstance(scheme.get_receiver(), WeightReceiver)


# ---------------------------------------------------------------------------- prepare_weights
@pytest.fixture
def context():
    return SimpleNamespace(
        policy=make_model(0),
        env=SimpleNamespace(transform=[SimpleNamespace(module=nn.Linear(3, 1))]),
        models={"critic": nn.Linear(4, 1)},
    )


@pytest.mark.parametrize("fmt", ["state_dict", "tensordict"])
def test_prepare_weights_none_resolves_the_model_id_on_the_context(context, fmt):
    scheme, strategy = MultiProcessWeightSyncScheme(), WeightStrategy(fmt)
    weights = scheme.prepare_weights(None, "env.transform[0].module", strategy, context)
    assert isinstance(weights, dict if fmt == "state_dict" else TensorDictBase)
    assert torch.equal(weights["weight"], context.env.transform[0].module.weight)


def test_prepare_weights_none_without_context_is_none():
    scheme = MultiProcessWeightSyncScheme()
    assert scheme.prepare_weights(None, "policy", WeightStrategy()) is None


def test_prepare_weights_module_is_extracted():
    model = nn.Linear(3, 1)
    weights = MultiProcessWeightSyncScheme().prepare_weights(
        model, "x", WeightStrategy("state_dict")
    )
    assert weights.keys() == {"weight", "bias"} and torch.equal(weights["bias"], model.bias)


def test_prepare_weights_tensordict_and_dict_pass_as_they_are():
    scheme, strategy = MultiProcessWeightSyncScheme(), WeightStrategy()
    td = TensorDict({"w": torch.zeros(2)})
    sd = {"w": torch.zeros(2)}
    assert scheme.prepare_weights(td, "policy", strategy) is td
    assert scheme.prepare_weights(sd, "policy", strategy) is sd


def test_prepare_weights_string_is_a_path_on_the_context(context):
    scheme, strategy = MultiProcessWeightSyncScheme(), WeightStrategy("state_dict")
    weights = scheme.prepare_weights('models["critic"]', "policy", strategy, context)
    assert torch.equal(weights["weight"], context.models["critic"].weight)
    with pytest.raises(ValueError, match="needs a context"):
        scheme.prepare_weights('models["critic"]', "policy", strategy)


def test_prepare_weights_of_another_type_is_refused():
    with pytest.raises(ValueError, match="cannot send weights of type int"):
        MultiProcessWeightSyncScheme().prepare_weights(3, "policy", WeightStrategy())


def test_shared_mem_prepare_weights_passes_weights_through():
    weights = {"w": torch.ones(1)}
    assert SharedMemWeightSyncScheme().prepare_weights(weights, "p", WeightStrategy()) is weights


# ---------------------------------------------------------------------------- init from a context
def test_init_on_sender_reads_pipes_num_workers_and_get_model_from_the_context(pipe):
    model = nn.Linear(2, 2)
    context = SimpleNamespace(
        pipes=[pipe[0]], num_workers=1, get_model=lambda model_id: {"policy": model}[model_id]
    )
    scheme = MultiProcessWeightSyncScheme()
    scheme.init_on_sender("policy", context)
    assert scheme._model is model and scheme.get_sender().transport.links[0].pipe is pipe[0]


def test_init_on_worker_reads_the_pipe_from_the_context(pipe):
    model = nn.Linear(2, 2)
    scheme = MultiProcessWeightSyncScheme()
    scheme.init_on_worker("policy", SimpleNamespace(pipe=pipe[1], policy=model))
    assert scheme._model is model and scheme.get_receiver().transport.link.pipe is pipe[1]


# ---------------------------------------------------------------------------------- misuse
@pytest.mark.parametrize("scheme_cls", [MultiProcessWeightSyncScheme, SharedMemWeightSyncScheme])
def test_no_pipes_on_the_sender_is_a_value_error(scheme_cls):
    with pytest.raises(ValueError, match=r"pipes=\[\.\.\.\]"):
        scheme_cls().init_on_sender("policy", model=nn.Linear(2, 2))


@pytest.mark.parametrize("scheme_cls", [MultiProcessWeightSyncScheme, SharedMemWeightSyncScheme])
def test_no_pipe_on_the_worker_is_a_value_error(scheme_cls):
    with pytest.raises(ValueError, match=r"pipe=\.\.\."):
        scheme_cls().init_on_worker("policy", model=nn.Linear(2, 2))


def test_num_workers_must_match_the_pipes(pipe):
    with pytest.raises(ValueError, match="num_workers=2 but 1 pipes"):
        MultiProcessWeightSyncScheme().init_on_sender("p", pipes=[pipe[0]], num_workers=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_send_receive_and_connect_before_init_say_what_to_call(backend):
    scheme = BACKENDS[backend]()
    with pytest.raises(RuntimeError, match=r"init_on_sender\(\)"):
        scheme.send()
    with pytest.raises(RuntimeError, match=r"init_on_worker\(\)"):
        scheme.receive()
    with pytest.raises(RuntimeError, match=r"init_on_sender\(\).*init_on_receiver\(\)"):
        scheme.connect()


def test_register_shared_weights_before_init_says_what_to_call():
    with pytest.raises(RuntimeError, match=r"init_on_sender\(\)"):
        SharedMemWeightSyncScheme().register_shared_weights("policy", {"w": torch.zeros(1)})


def test_sending_with_nothing_to_send_says_what_to_pass(pipe):
    scheme = MultiProcessWeightSyncScheme()
    scheme.init_on_sender("policy", pipes=[pipe[0]])  # no model, no context
    with pytest.raises(ValueError, match=r"nothing to send for model 'policy'"):
        scheme.send()


def test_a_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout must be a positive"):
        MultiProcessWeightSyncScheme(timeout=0)


# ----------------------------------------------------------------------------------- pickling
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sender_initialised_scheme_pickles_without_its_runtime(backend, pipe):
    scheme = WeightSyncScheme.from_backend(backend, strategy="tensordict")
    context = SimpleNamespace(policy=nn.Linear(2, 2), lock=threading.Lock())  # unpicklable
    scheme.init_on_sender("policy", context, pipes=[pipe[0]])
    copy = pickle.loads(pickle.dumps(scheme))
    assert type(copy) is type(scheme)
    assert copy.model_id == "policy" and copy.strategy.extract_as == "tensordict"
    assert copy.role is None
    for runtime in ("_context", "_model", "_sender", "_receiver", "_transport", "_pipes", "_pipe"):
        assert getattr(copy, runtime) is None, runtime
    copy.init_on_receiver("policy", model=nn.Linear(2, 2), pipe=pipe[1])  # rebuilt there
    assert copy.role == "receiver" and isinstance(copy.get_receiver(), WeightReceiver)
    scheme.shutdown()


def test_shutdown_allows_initialising_again(pipe):
    scheme = MultiProcessWeightSyncScheme()
    scheme.init_on_sender("policy", model=nn.Linear(2, 2), pipes=[pipe[0]])
    scheme.shutdown()
    assert scheme.role is None
    with pytest.raises(RuntimeError, match=r"init_on_sender\(\)"):
        scheme.get_sender()
    a, b = mp.Pipe()
    scheme.init_on_sender("policy", model=nn.Linear(2, 2), pipes=[a])
    assert scheme.role == "sender"
    scheme.shutdown()
    b.close()
