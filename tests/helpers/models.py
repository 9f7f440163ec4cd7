"""Test models that exercise every kind of state a sync must carry."""

from __future__ import annotations

import torch
from torch import nn


class Counter(nn.Module):
    """A module with parameters, a BatchNorm (running stats, int64 counter) and extra state."""

    def __init__(self, in_features: int = 4, hidden: int = 8, out_features: int = 2):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden))
        self.head = nn.Linear(hidden, out_features)
        self.updates = 0  # travels as extra state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.encoder(x)))

    def get_extra_state(self) -> dict:
        return {"updates": self.updates}

    def set_extra_state(self, state: dict) -> None:
        self.updates = state["updates"]


class TiedEmbedding(nn.Module):
    """A language-model-like module whose output layer shares the embedding's weight (tied
    parameters: ``state_dict()`` lists the one tensor under two names)."""

    def __init__(self, vocabulary: int = 6, width: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.body = nn.Linear(width, width)
        self.head = nn.Linear(width, vocabulary, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(self.embed(tokens))))


def make_model(seed: int = 0) -> Counter:
    """A deterministic Counter in eval mode (so outputs depend on weights only)."""
    torch.manual_seed(seed)
    return Counter().eval()


def perturb(model: Counter, step: int) -> None:
    """Change every tensor and the extra state, as a training step would."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if isinstance(tensor, torch.Tensor):
                tensor.add_(step if tensor.is_floating_point() else 1)
    model.updates += 1


def state_of(model: nn.Module) -> dict:
    """A detached copy of everything a sync must carry (tensors and extra state)."""
    return {
        k: v.detach().clone() if isinstance(v, torch.Tensor) else v
        for k, v in model.state_dict().items()
    }


def assert_same_state(got: dict, want: dict, who: str = "") -> None:
    """Assert two ``state_of`` snapshots hold the same keys and exactly equal values."""
    assert got.keys() == want.keys(), f"{who}: keys differ"
    for key, value in want.items():
        same = (
            torch.equal(got[key], value) if isinstance(value, torch.Tensor) else got[key] == value
        )
        assert same, f"{who}: {key} differs"


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold exactly the same tensors and extra state."""
    try:
        assert_same_state(state_of(a), state_of(b))
    except AssertionError:
        return False
    return True
