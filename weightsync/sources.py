"""What a caller may hand ``send``: weights, a module, a model path, or nothing (the model).

Model ids and string weights are paths resolved on a context object (see
:mod:`weightsync.paths`); modules are extracted in the scheme's weight format.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from weightsync.paths import resolve_model_id
from weightsync.strategy import Weights, WeightStrategy
from weightsync.tensordicts import is_tensordict


def resolve_model(context: Any, model_id: str) -> Any:
    """The model ``model_id`` names on ``context``: ``context.get_model(model_id)`` when the
    context offers it, else the path ``model_id`` resolved on it."""
    get_model = getattr(context, "get_model", None)
    if callable(get_model):
        return get_model(model_id)
    return resolve_model_id(context, model_id)


def prepare_weights(
    weights: Any,
    model_id: str | None,
    strategy: WeightStrategy,
    context: Any = None,
    model: Any = None,
) -> Weights | None:
    """Turn what a caller passed to ``send`` into weights ready to send.

    ``None``: the model ``model_id`` resolved on ``context`` (else ``model``), extracted; None
    when there is neither. An ``nn.Module``: extracted. A ``str``: a model path on ``context``.
    A TensorDict or a dict: as it is.
    """
    if weights is None:
        source = model if context is None else resolve_model(context, model_id)
        return None if source is None else strategy.extract_weights(source)
    if isinstance(weights, nn.Module):
        return strategy.extract_weights(weights)
    if isinstance(weights, str):
        if context is None:
            raise ValueError(
                f"weights={weights!r} is a model path, which needs a context to resolve on; "
                "pass the context to init_on_sender() or send the weights themselves"
            )
        target = resolve_model_id(context, weights)
        return strategy.extract_weights(target) if isinstance(target, nn.Module) else target
    if isinstance(weights, dict) or is_tensordict(weights):
        return weights
    raise ValueError(
        f"cannot send weights of type {type(weights).__name__}; pass None, an nn.Module, a "
        "TensorDict, a state_dict or a model path string"
    )
