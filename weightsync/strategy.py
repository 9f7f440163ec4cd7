"""Weight formats: how weights are extracted from and applied to models.

A :class:`WeightStrategy` fixes the format weights take at the API boundary: a ``TensorDict``
nested like the module tree, or a flat ``state_dict``. Both carry parameters, buffers and each
module's ``get_extra_state()``. Internally every scheme moves weights as :class:`FlatWeights`
(dotted names to tensors, plus extra states by module prefix), so the format costs nothing on the
wire.

Applying is validate-then-write: keys, shapes and dtypes are checked for the whole update before
the first byte is written, so a rejected update leaves the destination exactly as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from weightsync.errors import NonFiniteWeightsError, WeightMismatchError, WeightSyncError

WeightFormat = Literal["tensordict", "state_dict"]
WEIGHT_FORMATS: tuple[str, ...] = get_args(WeightFormat)
Weights = TensorDictBase | dict

#: Key under which a module's ``get_extra_state()`` travels in the tensordict format.
EXTRA_STATE_KEY = "__extra_state__"
#: Suffix torch uses for extra state in a ``state_dict``.
_STATE_DICT_EXTRA_SUFFIX = "_extra_state"


@dataclass
class FlatWeights:
    """Weights in the canonical flat form every transport moves.

    ``tensors`` maps dotted names (``"encoder.0.weight"``) to tensors; ``extra`` maps module
    prefixes (``"encoder"``, ``""`` for the root) to their ``get_extra_state()`` objects.
    """

    tensors: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)


def _has_extra_state(module: nn.Module) -> bool:
    return type(module).get_extra_state is not nn.Module.get_extra_state


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def module_weights(module: nn.Module, *, live: bool = False) -> FlatWeights:
    """Parameters, persistent buffers and extra states of ``module`` as :class:`FlatWeights`.

    With ``live=True`` the tensors are the module's own objects (to write into); otherwise they
    are detached views sharing the same storage (no copy).
    """
    tensors: dict[str, torch.Tensor] = {}
    extra: dict[str, Any] = {}
    seen: set[int] = set()  # tied tensors travel once, under their first name
    for prefix, sub in module.named_modules():
        persistent_buffers = (
            (name, buf)
            for name, buf in sub._buffers.items()
            if name not in sub._non_persistent_buffers_set
        )
        for name, tensor in (*sub._parameters.items(), *persistent_buffers):
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                tensors[_join(prefix, name)] = tensor if live else tensor.detach()
        if _has_extra_state(sub):
            extra[prefix] = sub.get_extra_state()
    return FlatWeights(tensors, extra)


_structure_changes = [0]  # bumped whenever any module (re)registers a parameter/buffer/submodule


def _structure_changed(*_: Any) -> None:
    _structure_changes[0] += 1


# Every path that puts a tensor or submodule into a module (``register_*``, attribute
# assignment, ``load_state_dict(assign=True)``) runs these global hooks: one counter increment.
nn.modules.module.register_module_parameter_registration_hook(_structure_changed)
nn.modules.module.register_module_buffer_registration_hook(_structure_changed)
nn.modules.module.register_module_module_registration_hook(_structure_changed)


class ModuleWeightsCache:
    """:func:`module_weights` of one module, walked again only when its structure may have changed.

    Walking the module tree costs microseconds per tensor, i.e. milliseconds per update for a
    model of a thousand small tensors. The walk is reused while no module anywhere has
    registered a parameter, buffer or submodule since (global registration hooks count those) and
    every tensor still points at the same memory (a ``.data`` re-assignment or a bind is seen
    too). Extra states are read afresh on every call.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self._stamp = -1
        self._live: FlatWeights | None = None
        self._detached: FlatWeights | None = None
        self._ptrs: list[int] = []
        self._extra_modules: list[tuple[str, nn.Module]] = []
        #: Changes whenever the tensors returned may differ from the last call's (new objects or
        #: new memory); equal generations mean the same tensors at the same addresses.
        self.generation = 0

    @property
    def structure_stamp(self) -> int:
        """Changes when a parameter, buffer or submodule may have been added or replaced."""
        return _structure_changes[0]

    def get(self, *, live: bool = False, recheck: bool = True) -> FlatWeights:
        """Same as ``module_weights(self.module, live=live)``.

        ``recheck=False`` trusts the tensor addresses read by the previous call (for a caller that
        has just made one): reading a thousand of them costs a third of a millisecond.
        """
        if self._stamp != _structure_changes[0] or self._live is None:
            self._live = module_weights(self.module, live=True)
            self._extra_modules = [
                (prefix, sub)
                for prefix, sub in self.module.named_modules()
                if _has_extra_state(sub)
            ]
            self._stamp = _structure_changes[0]
            self._detached = None
            self._ptrs = []  # forces a new generation below
        tensors = self._live.tensors
        if recheck or not self._ptrs:
            ptrs = [t.data_ptr() for t in tensors.values()]
            if ptrs != self._ptrs:
                self.generation += 1
                self._ptrs, self._detached = ptrs, None
        extra = {prefix: sub.get_extra_state() for prefix, sub in self._extra_modules}
        if live:
            return FlatWeights(tensors, extra)
        if self._detached is None:
            self._detached = FlatWeights({k: t.detach() for k, t in tensors.items()})
        return FlatWeights(self._detached.tensors, extra)


def flatten_weights(weights: Any) -> FlatWeights:
    """Convert weights in any accepted format (TensorDict, state_dict, FlatWeights) to flat form."""
    if isinstance(weights, FlatWeights):
        return weights
    if isinstance(weights, TensorDictBase):
        tensors: dict[str, torch.Tensor] = {}
        extra: dict[str, Any] = {}
        for key in weights.keys(include_nested=True, leaves_only=False, is_leaf=_is_td_leaf):
            key = key if isinstance(key, tuple) else (key,)
            if key[-1] == EXTRA_STATE_KEY:
                extra[".".join(key[:-1])] = weights.get_non_tensor(key)
            else:
                value = weights.get(key)
                if isinstance(value, torch.Tensor):
                    tensors[".".join(key)] = value
        return FlatWeights(tensors, extra)
    if isinstance(weights, Mapping):
        tensors, extra = {}, {}
        for key, value in weights.items():
            if key == _STATE_DICT_EXTRA_SUFFIX or key.endswith("." + _STATE_DICT_EXTRA_SUFFIX):
                extra[key[: -len(_STATE_DICT_EXTRA_SUFFIX)].rstrip(".")] = value
            elif isinstance(value, torch.Tensor):
                tensors[key] = value
            else:
                raise TypeError(
                    f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; only "
                    f"tensors and '{_STATE_DICT_EXTRA_SUFFIX}' entries can be synchronised"
                )
        return FlatWeights(tensors, extra)
    raise ValueError(
        f"cannot read weights from a {type(weights).__name__}: expected a TensorDict, a "
        "state_dict (dict of tensors) or FlatWeights"
    )


def _is_td_leaf(cls: type) -> bool:
    # Non-tensor entries (extra state) are TensorDictBase subclasses but must count as leaves.
    return not issubclass(cls, TensorDictBase) or cls.__name__ in (
        "NonTensorData",
        "NonTensorStack",
    )


def format_weights(flat: FlatWeights, extract_as: WeightFormat) -> Weights:
    """Express flat weights in the user-facing format ``extract_as`` (no tensor is copied)."""
    if extract_as == "state_dict":
        out: dict[str, Any] = dict(flat.tensors)
        for prefix, state in flat.extra.items():
            out[_join(prefix, _STATE_DICT_EXTRA_SUFFIX)] = state
        return out
    td = TensorDict()
    for key, tensor in flat.tensors.items():
        td.set(tuple(key.split(".")), tensor)
    for prefix, state in flat.extra.items():
        td.set_non_tensor(
            (*prefix.split("."), EXTRA_STATE_KEY) if prefix else EXTRA_STATE_KEY, state
        )
    return td


def _describe(tensor: torch.Tensor) -> str:
    return f"shape {tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"


def weight_mismatches(expected: FlatWeights, found: FlatWeights) -> list[str]:
    """One line per key where ``found`` does not fit ``expected`` (empty when it fits)."""
    problems = [f"missing key {k!r}" for k in expected.tensors if k not in found.tensors]
    problems += [f"unexpected key {k!r}" for k in found.tensors if k not in expected.tensors]
    for key, want in expected.tensors.items():
        got = found.tensors.get(key)
        if got is not None and (got.shape != want.shape or got.dtype != want.dtype):
            problems.append(f"{key!r}: expected {_describe(want)}, found {_describe(got)}")
    problems += [
        f"missing extra state of module {k or '<root>'!r}"
        for k in expected.extra
        if k not in found.extra
    ]
    problems += [
        f"unexpected extra state for module {k or '<root>'!r}"
        for k in found.extra
        if k not in expected.extra
    ]
    return problems


def check_finite(flat: FlatWeights, model_id: str | None = None) -> None:
    """Raise NonFiniteWeightsError naming every floating tensor that holds NaN or inf."""
    bad = [
        key
        for key, tensor in flat.tensors.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise NonFiniteWeightsError(
            f"weights of model {model_id!r} hold NaN/inf in {bad}; the update was refused and "
            "workers keep their previous weights. Fix the training instability, or build the "
            "scheme with reject_non_finite=False to let such weights through."
        )


def copy_weights(destination: FlatWeights, source: FlatWeights) -> None:
    """Copy validated ``source`` into ``destination`` tensor by tensor (any devices)."""
    try:
        with torch.no_grad():
            for key, dst in destination.tensors.items():
                src = source.tensors[key]
                if dst.data_ptr() != src.data_ptr():
                    dst.copy_(src, non_blocking=False)
    except Exception as err:  # a device error after validation: the destination is now mixed
        raise WeightSyncError(
            f"applying weights failed midway ({err}); the destination may hold a mix of old and "
            "new weights and must be refreshed by a complete update before it is used"
        ) from err


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

    def extract_weights(self, source: nn.Module | TensorDictBase | dict) -> Weights:
        """Return the weights of ``source`` in this strategy's format, sharing storage (no copy)."""
        if isinstance(source, nn.Module):
            return format_weights(module_weights(source), self.extract_as)
        if isinstance(source, (TensorDictBase, dict)):
            return format_weights(flatten_weights(source), self.extract_as)
        raise ValueError(
            f"cannot extract weights from a {type(source).__name__}; expected an nn.Module, a "
            "TensorDict or a state_dict"
        )

    def apply_weights(
        self,
        destination: nn.Module | TensorDictBase | dict,
        weights: Weights | FlatWeights | None,
        *,
        model_id: str | None = None,
    ) -> None:
        """Write ``weights`` into ``destination`` in place; ``None`` is a no-op.

        The format of ``weights`` is read from its type. The whole update is validated first;
        on a mismatch WeightMismatchError lists every offending key and nothing is written.
        A module keeps its parameter objects and its device.
        """
        if weights is None:
            return
        source = flatten_weights(weights)
        if isinstance(destination, nn.Module):
            target = module_weights(destination, live=True)
        elif isinstance(destination, (TensorDictBase, dict)):
            target = flatten_weights(destination)
        else:
            raise ValueError(
                f"cannot apply weights to a {type(destination).__name__}; expected an nn.Module, "
                "a TensorDict or a state_dict"
            )
        problems = weight_mismatches(target, source)
        if problems:
            raise WeightMismatchError(model_id, problems)
        copy_weights(target, source)
        if isinstance(destination, nn.Module):
            set_extra_states(destination, source.extra)
        elif source.extra:
            _store_extra(destination, source.extra)


def set_extra_states(module: nn.Module, extra: Mapping[str, Any]) -> None:
    """Restore each submodule's extra state with ``set_extra_state``."""
    for prefix, state in extra.items():
        module.get_submodule(prefix).set_extra_state(state)


def _store_extra(destination: TensorDictBase | dict, extra: Mapping[str, Any]) -> None:
    for prefix, state in extra.items():
        if isinstance(destination, TensorDictBase):
            key = (*prefix.split("."), EXTRA_STATE_KEY) if prefix else EXTRA_STATE_KEY
            destination.set_non_tensor(key, state)
        else:
            destination[_join(prefix, _STATE_DICT_EXTRA_SUFFIX)] = state
