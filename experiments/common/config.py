"""Config helpers: defaults read from constructors, plain containers, the config error type.

One source of defaults: a value that a ``_target_``'s constructor has a default for is read from
that constructor (:func:`from_constructor`), never written again in a schema or a YAML file; a
value without one is written once, in its schema dataclass. YAML options only choose (a schema,
a ``_target_``) and set what a preset changes. ``tests/experiments/test_config.py`` checks it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration that composes but cannot run; the message says what to change."""


def constructor_default(cls: type, name: str) -> Any:
    """The default of argument ``name`` of ``cls(...)``, looked up through its bases, whose
    ``__init__`` receives what a subclass passes on in ``**kwargs``."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameter = inspect.signature(init).parameters.get(name)
        if parameter is None:
            continue
        if parameter.default is inspect.Parameter.empty:
            raise TypeError(
                f"{cls.__qualname__}({name}=...) has no default to read: give the schema field "
                "a value of its own"
            )
        return parameter.default
    raise TypeError(f"{cls.__qualname__} takes no argument {name!r}: remove the schema field")


def from_constructor(cls: type, name: str, convert: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass ``field`` whose default is :func:`constructor_default` (``convert``-ed, e.g.
    into an Enum; sequences become fresh lists)."""
    value = constructor_default(cls, name)
    if convert is not None:
        value = convert(value)
    if isinstance(value, (list, tuple)):
        return dataclasses.field(default_factory=lambda: list(value))
    return dataclasses.field(default=value)


def option_schema(group: str, name: str) -> Callable[[type], type]:
    """Register the decorated dataclass in Hydra's ConfigStore as ``<group>/<name>``: the schema
    that option ``name``'s YAML file extends (``defaults: [/<group>/<name>@_here_]``)."""

    def register(cls: type) -> type:
        ConfigStore.instance().store(group=group, name=name, node=cls)
        return cls

    return register


def plain(node: Any) -> Any:
    """A config node as plain Python containers, enums as their names (for pickling, JSON and
    constructors that expect strings)."""
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return node.name if isinstance(node, Enum) else node
