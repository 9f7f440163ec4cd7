"""The distributed transport's building blocks: the store's address, layouts as plain data."""

from __future__ import annotations

import json
import socket

import pytest

from tests.helpers.models import make_model
from weightsync.flat import FlatLayout
from weightsync.transports.c10d import decode_layout, encode_layout, open_store
from weightsync.weights import module_weights


def test_the_store_listens_only_on_the_address_it_is_given():
    store = open_store("127.0.0.1", 0, is_master=True, timeout=5)
    socket.create_connection(("127.0.0.1", store.port), timeout=5).close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", store.port), timeout=5).close()


def test_a_layout_crosses_as_json_and_comes_back_equal():
    weights = module_weights(make_model())
    layout = FlatLayout.for_weights(weights)
    data = encode_layout(layout, list(weights.extra))
    assert isinstance(json.loads(data), dict)  # plain data: nothing to unpickle
    assert decode_layout(data) == (layout, list(weights.extra))


def _layout_doc(slot: list) -> bytes:
    return json.dumps(
        {"slots": [slot], "tensor_bytes": 64, "extra_capacity": 0, "extra_keys": []}
    ).encode()


@pytest.mark.parametrize(
    "doc",
    [
        b"\x80\x04pickle",
        _layout_doc(["w", "Tensor", [2], 0, 8]),
        _layout_doc(["w", "float32", [4], 0, 8]),
        _layout_doc(["w", "float32", [2], 60, 8]),
    ],
    ids=["pickle", "not-a-dtype", "wrong-size", "out-of-bounds"],
)
def test_a_malformed_layout_is_refused(doc):
    with pytest.raises(ValueError, match="malformed weight layout"):
        decode_layout(doc)
