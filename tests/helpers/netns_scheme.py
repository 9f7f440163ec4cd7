"""One process of the library-level two-host test, started inside a network namespace:

``python -m tests.helpers.netns_scheme trainer ADDRESS PORT NUM_WORKERS TOPOLOGY`` sends versions
2-4 after the initial weights, then prints ``{"acked": ..., "checksum": ...}``;
``python -m tests.helpers.netns_scheme worker ADDRESS PORT NUM_WORKERS TOPOLOGY ID OWN_ADDRESS``
receives until the trainer closes, then prints ``{"version": ..., "checksum": ...}``.
Each binds its own namespace's address; hosts are told apart by their network namespace.
"""

from __future__ import annotations

import json
import sys

import torch

from experiments.checksum import weights_checksum
from weightsync import DistributedWeightSyncScheme

#: A model large enough (4 MB) that the link's bytes are mostly weights.
MODEL_BYTES = 1000 * 1000 * 4 + 1000 * 4


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(1000, 1000)


def main(role: str, address: str, port: str, num_workers: str, topology: str, *rest: str) -> None:
    scheme = DistributedWeightSyncScheme(
        num_workers=int(num_workers), host=address, port=int(port), topology=topology,
        timeout=60, join_timeout=240, bind=address if role == "trainer" else rest[1],
    )  # fmt: skip
    if role == "trainer":
        model = make_model(0)
        scheme.init_on_sender("policy", model=model)
        scheme.connect()
        for step in range(2, 5):
            with torch.no_grad():
                model.weight.add_(step)
            scheme.send()
        acked = scheme.get_sender().acked_versions
        print(json.dumps({"acked": acked, "checksum": weights_checksum(model)}), flush=True)
        scheme.shutdown()
        return
    model = make_model(1)
    scheme.init_on_receiver("policy", model=model, worker_id=int(rest[0]))
    scheme.connect()
    while not scheme.closed:
        scheme.receive(0.1)
    version = scheme.get_receiver().version
    print(json.dumps({"version": version, "checksum": weights_checksum(model)}), flush=True)
    scheme.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
