"""The core weight model: weights in flat form, read from modules, checked and written.

Every transport moves :class:`FlatWeights` (dotted names to tensors, plus each module's extra
state by module prefix), whatever format the user sees (:mod:`weightsync.strategy`). This module
reads them from a module (:func:`module_weights`, cached by :class:`ModuleWeightsCache`),
converts user formats to them (:func:`flatten_weights`), checks them (:func:`weight_mismatches`,
:func:`check_finite`) and writes them (:func:`copy_weights`, :func:`set_extra_states`).

Validate, then write: callers check the whole update with :func:`weight_mismatches` before the
first byte is written, so a rejected update leaves the destination exactly as it was.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from weightsync.errors import NonFiniteWeightsError, UnmaterializedWeightsError, WeightSyncError
from weightsync.tensordicts import is_tensordict, is_tensordict_class

#: Key under which a module's ``get_extra_state()`` travels in the tensordict format.
EXTRA_STATE_KEY = "__extra_state__"
#: Suffix torch uses for extra state in a ``state_dict``.
STATE_DICT_EXTRA_SUFFIX = "_extra_state"


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
_hooks_installed = False


def _structure_changed(*_: Any) -> None:
    _structure_changes[0] += 1


def _install_registration_hooks() -> None:
    """Count every parameter, buffer and submodule registration in this process, from now on.

    Every path that puts a tensor or submodule into a module (``register_*``, attribute
    assignment, ``load_state_dict(assign=True)``) runs torch's global registration hooks; ours is
    one counter increment. They are installed by the first :class:`ModuleWeightsCache` (the first
    send or receive of a model), not at import, so importing weightsync changes nothing in a
    process that never synchronises a module. They stay for the life of the process.
    """
    global _hooks_installed
    if not _hooks_installed:
        nn.modules.module.register_module_parameter_registration_hook(_structure_changed)
        nn.modules.module.register_module_buffer_registration_hook(_structure_changed)
        nn.modules.module.register_module_module_registration_hook(_structure_changed)
        _hooks_installed = True


_shape_and_dtype = operator.attrgetter("shape", "dtype")


class ModuleWeightsCache:
    """:func:`module_weights` of one module, walked again only when its structure may have changed.

    Walking the module tree costs microseconds per tensor, i.e. milliseconds per update for a
    model of a thousand small tensors. The walk is reused while no module anywhere has
    registered a parameter, buffer or submodule since (global registration hooks count those);
    every call that re-reads the tensors' addresses also re-reads their shapes and dtypes (a
    ``.data`` re-assignment, ``model.double()`` or a bind changes those without registering
    anything), about a third of a millisecond for a thousand tensors. Extra states are read
    afresh on every call.

    ``watch_shapes=False`` skips the shapes and dtypes (about 0.15 ms of that third): for a
    module whose layout nothing downstream validates, e.g. the trainer's own model, whose moves
    are seen through its addresses.
    """

    def __init__(self, module: nn.Module, *, watch_shapes: bool = True):
        _install_registration_hooks()
        self.module = module
        self.watch_shapes = watch_shapes
        self._stamp = -1
        self._live: FlatWeights | None = None
        self._detached: FlatWeights | None = None
        self._ptrs: list[int] = []
        self._metas: list[tuple[torch.Size, torch.dtype]] = []
        self._extra_modules: list[tuple[str, nn.Module]] = []
        #: Changes whenever the tensors returned may differ from the last call's (new objects or
        #: new memory); equal generations mean the same tensors at the same addresses.
        self.generation = 0
        #: Changes whenever a tensor may have been added, replaced, reshaped or re-typed, as of
        #: the last call that re-read the addresses.
        self.structure_stamp = 0

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
            self.structure_stamp += 1
        tensors = self._live.tensors
        if recheck or not self._ptrs:
            ptrs = list(map(torch.Tensor.data_ptr, tensors.values()))
            metas = list(map(_shape_and_dtype, tensors.values())) if self.watch_shapes else []
            if ptrs != self._ptrs:
                self.generation += 1
                self._ptrs, self._detached = ptrs, None
            if metas != self._metas:
                self.structure_stamp += 1
                self._metas, self._detached = metas, None
        extra = {prefix: sub.get_extra_state() for prefix, sub in self._extra_modules}
        if live:
            return FlatWeights(tensors, extra)
        if self._detached is None:
            self._detached = FlatWeights({k: t.detach() for k, t in tensors.items()})
        return FlatWeights(self._detached.tensors, extra)


def _tied_key(tensor: torch.Tensor) -> tuple | None:
    """What two entries share when they are one tied tensor: the same view of the same memory
    (None for a tensor without memory, which is never taken for a tie)."""
    if tensor.is_meta or tensor.data_ptr() == 0:
        return None
    return (tensor.device, tensor.data_ptr(), tensor.dtype, tensor.shape, tensor.stride())


def _without_ties(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with each tied tensor under its first name only, as :func:`module_weights`
    lists a module's tied parameters (``module.state_dict()`` lists them under every name)."""
    seen: set[tuple] = set()
    kept = {}
    for key, tensor in tensors.items():
        tie = _tied_key(tensor)
        if tie is None or tie not in seen:
            kept[key] = tensor
            if tie is not None:
                seen.add(tie)
    return kept


def flatten_weights(weights: Any) -> FlatWeights:
    """Convert weights in any accepted format (TensorDict, state_dict, FlatWeights) to flat form.

    A tensor listed under several names (tied parameters, as ``module.state_dict()`` lists them)
    is kept under its first name, as the module's own weights are.
    """
    if isinstance(weights, FlatWeights):
        return weights
    if is_tensordict(weights):
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
        return FlatWeights(_without_ties(tensors), extra)
    if isinstance(weights, Mapping):
        tensors, extra = {}, {}
        for key, value in weights.items():
            if key == STATE_DICT_EXTRA_SUFFIX or key.endswith("." + STATE_DICT_EXTRA_SUFFIX):
                extra[key[: -len(STATE_DICT_EXTRA_SUFFIX)].rstrip(".")] = value
            elif isinstance(value, torch.Tensor):
                tensors[key] = value
            else:
                raise TypeError(
                    f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; only "
                    f"tensors and '{STATE_DICT_EXTRA_SUFFIX}' entries can be synchronised"
                )
        return FlatWeights(_without_ties(tensors), extra)
    raise ValueError(
        f"cannot read weights from a {type(weights).__name__}: expected a TensorDict, a "
        "state_dict (dict of tensors) or FlatWeights"
    )


def _is_td_leaf(cls: type) -> bool:
    # Non-tensor entries (extra state) are TensorDictBase subclasses but must count as leaves.
    return not is_tensordict_class(cls) or cls.__name__ in (
        "NonTensorData",
        "NonTensorStack",
    )


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


def meta_keys(flat: FlatWeights) -> list[str]:
    """The keys of tensors on the ``meta`` device (shapes, no data)."""
    return [key for key, tensor in flat.tensors.items() if tensor.is_meta]


def check_materialized(flat: FlatWeights, model_id: str | None = None) -> None:
    """Raise UnmaterializedWeightsError naming every tensor of ``flat`` on the meta device."""
    keys = meta_keys(flat)
    if keys:
        raise UnmaterializedWeightsError(
            f"weights of model {model_id!r} are on the meta device (shapes without data) in "
            f"{keys}; nothing was sent and the version did not move. Materialise them first, "
            "e.g. module.to_empty(device='cpu') and then load or initialise the weights."
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


def set_extra_states(module: nn.Module, extra: Mapping[str, Any]) -> None:
    """Restore each submodule's extra state with ``set_extra_state``, from a copy: a module that
    keeps the object it is given (and later changes it in place) must change neither the
    weights it was sent nor what the next apply of the same weights restores."""
    for prefix, state in extra.items():
        module.get_submodule(prefix).set_extra_state(copy.deepcopy(state))
