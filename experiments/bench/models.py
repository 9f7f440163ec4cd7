"""Bench models: stacks of linear layers of a chosen size, and version stamps in their weights.

A model is ``nn.Sequential`` of ``depth`` square ``nn.Linear(width, width)`` layers, so it can
run a real forward/backward (the trainer's work that ``send_async`` overlaps). The trainer's
"optimizer step" writes the update's version into a few stamp positions (the first and last
element of the first, middle and last tensor); a worker reads them back from its own model to
verify that it acts on that version, and a whole-model integer checksum verifies every byte.
"""

from __future__ import annotations

import torch
from torch import nn

#: name -> (width, depth) of the stack of square linear layers.
BENCH_MODELS: dict[str, tuple[int, int]] = {
    "1M": (1024, 1),  # 1.05M parameters, 2 tensors
    "10M": (1024, 10),  # 10.5M parameters, 20 tensors
    "100M": (4096, 6),  # 100.7M parameters (403 MB), 12 tensors
    "small-1000": (45, 500),  # 1.04M parameters in 1000 small tensors
    "tiny": (16, 2),  # for tests
}


_CHECKSUM_MOD = (1 << 61) - 1  # fits the int64 report slot


def build_model(name: str, seed: int = 0) -> nn.Sequential:
    """The bench model ``name`` with deterministic initial weights."""
    if name not in BENCH_MODELS:
        raise ValueError(f"unknown bench model {name!r}; choose from {list(BENCH_MODELS)}")
    width, depth = BENCH_MODELS[name]
    torch.manual_seed(seed)
    with torch.no_grad():
        layers = [nn.Linear(width, width) for _ in range(depth)]
    return nn.Sequential(*layers)


def input_size(model: nn.Sequential) -> int:
    return model[0].in_features


def _stamped(model: nn.Module) -> list[torch.Tensor]:
    # The parameter objects are picked once (a sync keeps them), their current memory each time.
    picked = model.__dict__.get("_bench_stamped")
    if picked is None:
        tensors = list(model.parameters())
        picked = [tensors[i] for i in sorted({0, len(tensors) // 2, len(tensors) - 1})]
        model.__dict__["_bench_stamped"] = picked
    return [p.detach().view(-1) for p in picked]


def stamp(model: nn.Module, version: int) -> None:
    """Write ``version`` into the model's stamp positions (the bench's optimizer step)."""
    with torch.no_grad():
        for flat in _stamped(model):
            flat[0] = version
            flat[-1] = version


def read_stamps(model: nn.Module) -> list[float]:
    """The values at the stamp positions (all equal to the version on a consistent model)."""
    return [float(v) for flat in _stamped(model) for v in (flat[0], flat[-1])]


def checksum(model: nn.Module) -> int:
    """An exact, order-independent checksum of every parameter's bits."""
    total = 0
    with torch.no_grad():
        for i, p in enumerate(model.parameters(), start=1):
            bits = p.detach().reshape(-1).view(torch.int32)
            for chunk in bits.split(1 << 18):  # small temporaries: no lasting heap growth
                total = (total + i * int(chunk.sum(dtype=torch.int64))) % _CHECKSUM_MOD
    return total
