"""FlatLayout and FlatBuffer: one aligned byte buffer per model, written and read back exactly,
pickled as a handle; alias_into keeps the model's parameter objects."""

from __future__ import annotations

import itertools
import pickle
from multiprocessing.reduction import ForkingPickler

import torch
import torch.multiprocessing
from torch import nn

from tests.helpers.models import make_model, perturb
from weightsync.flat import FlatBuffer, FlatLayout, alias_into, can_alias, is_aliased
from weightsync.weights import module_weights


def test_every_tensor_starts_64_byte_aligned_whatever_its_dtype():
    weights = module_weights(make_model())  # float32 and int64 tensors of odd sizes
    layout = FlatLayout.for_weights(weights)
    assert [slot.key for slot in layout.slots] == list(weights.tensors)
    for slot in layout.slots:
        assert slot.offset % 64 == 0
    for slot, following in itertools.pairwise(layout.slots):
        assert slot.offset + slot.nbytes <= following.offset  # no overlap
    assert layout.extra_capacity > 0  # the model has extra state


def test_write_then_read_gives_back_every_tensor_and_the_extra_state():
    model = make_model()
    perturb(model, 3)
    weights = module_weights(model)
    buffer = FlatBuffer.for_weights(weights, shared=False)
    assert buffer.mismatches(weights) == []
    buffer.write(weights)
    back = buffer.read()
    assert back.tensors.keys() == weights.tensors.keys()
    for key, tensor in weights.tensors.items():
        assert torch.equal(back.tensors[key], tensor) and back.tensors[key].dtype == tensor.dtype
    assert back.extra == {"": {"updates": 1}}


def test_a_buffer_lists_what_does_not_fit():
    buffer = FlatBuffer.for_weights(module_weights(nn.Linear(3, 2)), shared=False)
    problems = buffer.mismatches(module_weights(nn.Linear(3, 4)))
    assert problems == [
        "'weight': expected shape (2, 3) float32, found shape (4, 3) float32",
        "'bias': expected shape (2,) float32, found shape (4,) float32",
    ]


def test_a_shared_buffer_pickles_as_a_handle_to_the_same_memory():
    weights = module_weights(make_model())
    buffer = FlatBuffer.for_weights(weights, shared=True)
    buffer.write(weights)
    blob = bytes(ForkingPickler.dumps(buffer))  # how pipes and process args pickle
    assert len(blob) < buffer.data.numel()  # the bytes did not travel
    copy = pickle.loads(blob)
    assert copy.layout == buffer.layout
    assert copy.data.data_ptr() == buffer.data.data_ptr()  # same process: the same mapping
    assert torch.equal(copy.read().tensors["head.weight"], weights.tensors["head.weight"])


def test_alias_into_keeps_parameter_objects_and_values():
    model = make_model()
    params = {name: p for name, p in model.named_parameters()}
    expected = {k: v.clone() for k, v in module_weights(model).tensors.items()}
    live = module_weights(model, live=True)
    buffer = FlatBuffer.for_weights(live, shared=False)
    assert can_alias(live.tensors, buffer) and not is_aliased(live.tensors, buffer)
    alias_into(live.tensors, buffer)
    assert is_aliased(live.tensors, buffer)
    for name, p in model.named_parameters():
        assert p is params[name] and isinstance(p, nn.Parameter)
    for key, tensor in module_weights(model).tensors.items():
        assert torch.equal(tensor, expected[key])
    with torch.no_grad():
        buffer.views()["head.bias"].fill_(5.0)  # the model now lives in the buffer
    assert torch.equal(model.head.bias, torch.full((2,), 5.0))
