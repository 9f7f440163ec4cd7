"""WeightStrategy: both formats carry parameters, buffers and extra state of nested modules,
apply in place (same parameter objects, same device), and refuse what does not fit."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from tests.helpers.models import assert_same_state, make_model, perturb, state_of
from weightsync import WeightMismatchError, WeightStrategy
from weightsync.weights import EXTRA_STATE_KEY

FORMATS = ["state_dict", "tensordict"]


class Deep(nn.Module):
    """Nested three levels, with extra state at the root and in a submodule."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([make_model(3), nn.Sequential(nn.Linear(2, 2))])
        self.register_buffer("steps", torch.zeros(3, dtype=torch.int64))
        self.register_buffer("scratch", torch.ones(1), persistent=False)
        self.tag = "init"

    def get_extra_state(self):
        return {"tag": self.tag}

    def set_extra_state(self, state):
        self.tag = state["tag"]


def test_unknown_format_is_a_value_error_listing_the_choices():
    with pytest.raises(ValueError, match=r"extract_as='pickle'.*tensordict.*state_dict"):
        WeightStrategy("pickle")


def test_default_format_is_tensordict():
    assert WeightStrategy().extract_as == "tensordict"


def test_state_dict_format_has_the_keys_of_module_state_dict():
    model = make_model()
    weights = WeightStrategy("state_dict").extract_weights(model)
    assert isinstance(weights, dict)
    assert weights.keys() == model.state_dict().keys()
    assert weights["_extra_state"] == {"updates": 0}
    assert weights["encoder.1.running_mean"].shape == (8,)  # a buffer
    assert weights["encoder.1.num_batches_tracked"].dtype == torch.int64


def test_tensordict_format_nests_like_the_module_tree():
    model = make_model()
    weights = WeightStrategy("tensordict").extract_weights(model)
    assert isinstance(weights, TensorDictBase)
    assert torch.equal(weights["encoder", "0", "weight"], model.encoder[0].weight)
    assert torch.equal(weights["encoder", "1", "running_var"], model.encoder[1].running_var)
    assert weights.get_non_tensor(EXTRA_STATE_KEY) == {"updates": 0}


@pytest.mark.parametrize("fmt", FORMATS)
def test_extract_shares_storage_and_detaches(fmt):
    model = make_model()
    weights = WeightStrategy(fmt).extract_weights(model)
    head = weights["head", "weight"] if fmt == "tensordict" else weights["head.weight"]
    assert head.data_ptr() == model.head.weight.data_ptr()
    assert not head.requires_grad


@pytest.mark.parametrize("fmt", FORMATS)
def test_apply_carries_parameters_buffers_and_extra_state(fmt):
    strategy = WeightStrategy(fmt)
    source, destination = make_model(0), make_model(1)
    perturb(source, 3)
    strategy.apply_weights(destination, strategy.extract_weights(source))
    assert_same_state(state_of(destination), state_of(source))
    assert destination.updates == 1


class TensorExtraState(nn.Module):
    """Keeps the extra-state tensor it is given, as TorchRL's own test module does."""

    def __init__(self, value: float):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.stats = torch.full((3,), value)

    def get_extra_state(self):
        return {"stats": self.stats}

    def set_extra_state(self, state):
        self.stats = state["stats"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_applying_the_same_weights_twice_restores_tensor_extra_state_each_time(fmt):
    """TorchRL parity: repeated syncs neither consume nor skip ``__extra_state__``; a module
    that changes its extra-state tensor in place changes neither the weights it was sent nor
    the trainer's."""
    strategy = WeightStrategy(fmt)
    source, destination = TensorExtraState(5.0), TensorExtraState(0.0)
    weights = strategy.extract_weights(source)
    for _ in range(2):
        strategy.apply_weights(destination, weights)
        assert torch.equal(destination.stats, torch.full((3,), 5.0))
        destination.stats.zero_()
    assert torch.equal(source.stats, torch.full((3,), 5.0))


@pytest.mark.parametrize("fmt", FORMATS)
def test_nested_modules_and_extra_state_at_every_level(fmt):
    strategy = WeightStrategy(fmt)
    source, destination = Deep(), Deep()
    perturb(source.blocks[0], 2)
    with torch.no_grad():
        source.blocks[1][0].weight.fill_(7.0)
        source.steps += 5
        source.scratch.fill_(9.0)  # not persistent: must not travel
    source.tag = "trained"
    strategy.apply_weights(destination, strategy.extract_weights(source))
    assert_same_state(state_of(destination), state_of(source))
    assert destination.tag == "trained" and destination.blocks[0].updates == 1
    assert torch.equal(destination.scratch, torch.ones(1))


@pytest.mark.parametrize("fmt", FORMATS)
def test_apply_keeps_parameter_objects_and_device(fmt):
    strategy = WeightStrategy(fmt)
    source, destination = make_model(0), make_model(1)
    before = {name: p for name, p in destination.named_parameters()}
    buffers = {name: b for name, b in destination.named_buffers()}
    strategy.apply_weights(destination, strategy.extract_weights(source))
    for name, p in destination.named_parameters():
        assert p is before[name] and isinstance(p, nn.Parameter) and p.device.type == "cpu"
    for name, b in destination.named_buffers():
        assert b is buffers[name]
    assert torch.equal(destination.head.weight, source.head.weight)


@pytest.mark.parametrize("fmt", FORMATS)
def test_applying_to_a_float64_model_is_refused_and_leaves_it_unchanged(fmt):
    strategy = WeightStrategy(fmt)
    destination = make_model(1).double()
    before = state_of(destination)
    with pytest.raises(
        WeightMismatchError, match=r"'head.weight': expected .* float64, found .*float32"
    ):
        strategy.apply_weights(destination, strategy.extract_weights(make_model(0)))
    assert_same_state(state_of(destination), before)


@pytest.mark.parametrize("fmt", FORMATS)
def test_mismatched_shapes_and_keys_are_listed_and_nothing_is_written(fmt):
    strategy = WeightStrategy(fmt)
    weights = strategy.extract_weights(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 5)))
    destination = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 4))
    before = state_of(destination)
    with pytest.raises(WeightMismatchError) as info:
        strategy.apply_weights(destination, weights)
    assert info.value.problems == [
        "'1.weight': expected shape (4, 2) float32, found shape (5, 2) float32",
        "'1.bias': expected shape (4,) float32, found shape (5,) float32",
    ]
    assert_same_state(state_of(destination), before)  # layer 0 fits, but was not written either

    state = WeightStrategy("state_dict").extract_weights(nn.Linear(3, 2))
    del state["bias"]
    state["extra"] = torch.zeros(1)
    with pytest.raises(
        WeightMismatchError, match=r"missing key 'bias'[\s\S]*unexpected key 'extra'"
    ):
        strategy.apply_weights(nn.Linear(3, 2), state)


@pytest.mark.parametrize("src_fmt", FORMATS)
@pytest.mark.parametrize("dst_fmt", FORMATS)
def test_the_format_of_the_weights_is_read_from_their_type(src_fmt, dst_fmt):
    source, destination = make_model(0), make_model(1)
    perturb(source, 1)
    weights = WeightStrategy(src_fmt).extract_weights(source)
    WeightStrategy(dst_fmt).apply_weights(destination, weights)
    assert_same_state(state_of(destination), state_of(source))


@pytest.mark.parametrize("fmt", FORMATS)
def test_extract_from_a_tensordict_or_a_dict_converts_the_format(fmt):
    model = make_model()
    strategy = WeightStrategy(fmt)
    kind = dict if fmt == "state_dict" else TensorDictBase
    for source in (model.state_dict(), WeightStrategy("tensordict").extract_weights(model)):
        weights = strategy.extract_weights(source)
        assert isinstance(weights, kind)
        destination = make_model(1)
        strategy.apply_weights(destination, weights)
        assert_same_state(state_of(destination), state_of(model))


def test_extract_from_anything_else_names_the_type():
    with pytest.raises(ValueError, match="cannot extract weights from a list"):
        WeightStrategy().extract_weights([torch.zeros(1)])


def test_apply_to_anything_else_names_the_type():
    with pytest.raises(ValueError, match="cannot apply weights to a str"):
        WeightStrategy().apply_weights("policy", {"w": torch.zeros(1)})


def test_none_weights_are_a_no_op():
    model = make_model()
    before = state_of(model)
    WeightStrategy().apply_weights(model, None)
    assert_same_state(state_of(model), before)


@pytest.mark.parametrize("fmt", FORMATS)
def test_apply_into_a_tensordict_or_dict_destination_in_place(fmt):
    source = make_model(0)
    perturb(source, 2)
    strategy = WeightStrategy(fmt)
    destination = strategy.extract_weights(make_model(1))
    destination = (
        destination.clone()
        if isinstance(destination, TensorDict)
        else {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in destination.items()}
    )
    target = destination["head", "weight"] if fmt == "tensordict" else destination["head.weight"]
    strategy.apply_weights(destination, strategy.extract_weights(source))
    assert torch.equal(target, source.head.weight)  # written into the tensor that was there
    extra = (
        destination.get_non_tensor(EXTRA_STATE_KEY)
        if fmt == "tensordict"
        else destination["_extra_state"]
    )
    assert extra == {"updates": 1}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("direction", ["cpu->cuda", "cuda->cpu"])
def test_weights_extracted_on_one_device_apply_to_a_model_on_another(fmt, direction):
    src_dev, dst_dev = direction.split("->")
    strategy = WeightStrategy(fmt)
    source, destination = make_model(0).to(src_dev), make_model(1).to(dst_dev)
    perturb(source, 2)
    params = {name: p for name, p in destination.named_parameters()}
    strategy.apply_weights(destination, strategy.extract_weights(source))
    for name, p in destination.named_parameters():
        assert p is params[name] and p.device.type == dst_dev
    for name, tensor in source.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(destination.state_dict()[name].cpu(), tensor.cpu()), name
    assert destination.updates == 1


def test_tensordict_is_imported_only_once_a_tensordict_is_made() -> None:
    """``import tensordict`` costs seconds in every worker process: syncing state_dicts never
    pays it; the first TensorDict made does."""
    probe = (
        "import sys, torch, weightsync\n"
        "from torch import nn\n"
        "source, target = nn.Linear(3, 2), nn.Linear(3, 2)\n"
        "strategy = weightsync.WeightStrategy('state_dict')\n"
        "strategy.apply_weights(target, strategy.extract_weights(source))\n"
        "assert torch.equal(target.weight, source.weight)\n"
        "print('tensordict' in sys.modules)\n"
        "weights = weightsync.WeightStrategy('tensordict').extract_weights(source)\n"
        "print('tensordict' in sys.modules, type(weights).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["False", "True TensorDict"], out.stdout + out.stderr
