"""Weight formats: the shape weights take at the API boundary.

A :class:`WeightStrategy` fixes that format: a ``TensorDict`` nested like the module tree, or a
flat ``state_dict``. Both carry parameters, buffers and each module's ``get_extra_state()``.
Internally every scheme moves :class:`~weightsync.weights.FlatWeights` (see
:mod:`weightsync.weights`), so the format costs nothing on the wire: this module only converts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, get_args

from torch import nn

from weightsync.errors import WeightMismatchError
from weightsync.tensordicts import empty_tensordict, is_tensordict
from weightsync.weights import (
    EXTRA_STATE_KEY,
    STATE_DICT_EXTRA_SUFFIX,
    FlatWeights,
    copy_weights,
    flatten_weights,
    module_weights,
    set_extra_states,
    weight_mismatches,
)

if TYPE_CHECKING:
    from tensordict import TensorDictBase

WeightFormat = Literal["tensordict", "state_dict"]
WEIGHT_FORMATS: tuple[str, ...] = get_args(WeightFormat)
#: The format every scheme and endpoint uses unless told otherwise (the reference API's
#: ``WeightSyncScheme(strategy="state_dict")``). Two defaults differ on purpose, as in the
#: reference API: a bare ``WeightStrategy()`` and ``SharedMemWeightSyncScheme`` use
#: ``"tensordict"``, TorchRL's own choice for them.
DEFAULT_FORMAT: WeightFormat = "state_dict"
Weights: TypeAlias = "TensorDictBase | dict"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def format_weights(flat: FlatWeights, extract_as: WeightFormat) -> Weights:
    """Express flat weights in the user-facing format ``extract_as`` (no tensor is copied)."""
    if extract_as == "state_dict":
        out: dict[str, Any] = dict(flat.tensors)
        for prefix, state in flat.extra.items():
            out[_join(prefix, STATE_DICT_EXTRA_SUFFIX)] = state
        return out
    td = empty_tensordict()
    for key, tensor in flat.tensors.items():
        td.set(tuple(key.split(".")), tensor)
    for prefix, state in flat.extra.items():
        td.set_non_tensor(
            (*prefix.split("."), EXTRA_STATE_KEY) if prefix else EXTRA_STATE_KEY, state
        )
    return td


class WeightStrategy:
    """Extracts weights from models and applies them, in one of two formats.

    Args:
        extract_as: ``"tensordict"`` (a TensorDict nested like the module tree) or
            ``"state_dict"`` (a flat dict with dotted keys). Both carry parameters, buffers and
            ``get_extra_state()``.

    Example:
        >>> import torch
        >>> strategy = WeightStrategy(extract_as="state_dict")
        >>> trainer, worker = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        >>> strategy.apply_weights(worker, strategy.extract_weights(trainer))
        >>> bool(torch.equal(worker.weight, trainer.weight))
        True
    """

    def __init__(self, extract_as: WeightFormat = "tensordict"):
        if extract_as not in WEIGHT_FORMATS:
            raise ValueError(
                f"unknown weight format extract_as={extract_as!r}; expected one of "
                f"{list(WEIGHT_FORMATS)}"
            )
        self.extract_as: WeightFormat = extract_as

    def __repr__(self) -> str:
        return f"{type(self).__name__}(extract_as={self.extract_as!r})"

    def __eq__(self, other: object) -> bool:
        """Equal to a strategy of the same format, or to the format's name (TorchRL's configs
        compare ``scheme.strategy`` with ``"tensordict"``)."""
        if isinstance(other, WeightStrategy):
            return other.extract_as == self.extract_as
        if isinstance(other, str):
            return other == self.extract_as
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.extract_as)

    def extract_weights(self, source: nn.Module | TensorDictBase | dict) -> Weights:
        """Return the weights of ``source`` in this strategy's format, sharing storage (no copy)."""
        if isinstance(source, nn.Module):
            return format_weights(module_weights(source), self.extract_as)
        if isinstance(source, dict) or is_tensordict(source):
            return format_weights(flatten_weights(source), self.extract_as)
        raise ValueError(
            f"cannot extract weights from a {type(source).__name__}; expected an nn.Module, a "
            "TensorDict or a state_dict"
        )

    def apply_weights(
        self,
        destination: nn.Module | TensorDictBase | dict,
        weights: Weights | FlatWeights | None,
        inplace: bool = True,
        *,
        model_id: str | None = None,
    ) -> None:
        """Write ``weights`` into ``destination`` in place; ``None`` is a no-op.

        The format of ``weights`` is read from its type. The whole update is validated first;
        on a mismatch WeightMismatchError lists every offending key and nothing is written.
        A module keeps its parameter objects and its device. ``inplace=False`` (modules only, as
        in TorchRL) points the module's parameters and buffers at the given tensors instead of
        copying into them.
        """
        if weights is None:
            return
        source = flatten_weights(weights)
        if isinstance(destination, nn.Module):
            target = module_weights(destination, live=True)
        elif isinstance(destination, dict) or is_tensordict(destination):
            target = flatten_weights(destination)
        else:
            raise ValueError(
                f"cannot apply weights to a {type(destination).__name__}; expected an nn.Module, "
                "a TensorDict or a state_dict"
            )
        if not inplace and not isinstance(destination, nn.Module):
            raise ValueError(
                f"inplace=False needs an nn.Module destination, got a {type(destination).__name__}"
                "; apply in place (the default) to a TensorDict or a state_dict"
            )
        problems = weight_mismatches(target, source)
        if problems:
            raise WeightMismatchError(model_id, problems)
        if inplace:
            copy_weights(target, source)
        else:
            for key, tensor in target.tensors.items():
                tensor.data = source.tensors[key]
        if isinstance(destination, nn.Module):
            set_extra_states(destination, source.extra)
        elif source.extra:
            _store_extra(destination, source.extra)


def _store_extra(destination: TensorDictBase | dict, extra: Mapping[str, Any]) -> None:
    for prefix, state in extra.items():
        if is_tensordict(destination):
            key = (*prefix.split("."), EXTRA_STATE_KEY) if prefix else EXTRA_STATE_KEY
            destination.set_non_tensor(key, state)
        else:
            destination[_join(prefix, STATE_DICT_EXTRA_SUFFIX)] = state
