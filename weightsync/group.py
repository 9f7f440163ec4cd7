"""Several models updated as one: every worker applies all of them or none."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from weightsync.paths import resolve_model_id


class ModelGroup(nn.Module):
    """Bundle existing models under one model id so an update covers all of them atomically.

    The models are not copied or re-parented: the group merely refers to them (an ``nn.Module``
    may have several parents). A scheme synchronising the group validates the whole bundle before
    writing any of it, so a worker never holds a new policy with an old critic.

    Example:
        >>> import torch
        >>> group = ModelGroup({"policy": torch.nn.Linear(4, 2), "critic": torch.nn.Linear(4, 1)})
        >>> sorted(group.state_dict())
        ['critic.bias', 'critic.weight', 'policy.bias', 'policy.weight']
    """

    def __init__(self, models: Mapping[str, nn.Module]):
        super().__init__()
        for name, model in models.items():
            if not isinstance(model, nn.Module):
                raise TypeError(
                    f"ModelGroup member {name!r} is a {type(model).__name__}, not a module"
                )
            if "." in name or not name:
                raise ValueError(f"ModelGroup member name {name!r} must be non-empty with no '.'")
            self.add_module(name, model)

    @classmethod
    def from_context(cls, context: object, model_ids: Mapping[str, str]) -> ModelGroup:
        """Group models found on ``context`` by path: ``{"critic": 'models["critic"]'}``."""
        return cls({name: resolve_model_id(context, path) for name, path in model_ids.items()})

    def forward(self, *args, **kwargs):
        raise RuntimeError("a ModelGroup only bundles models for synchronisation; call a member")
