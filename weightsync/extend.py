"""Adding calls to a class from outside it: how compatibility layers stand beside the core.

A compatibility layer (TorchRL's collector protocol, its older calls) offers its calls on the
core's own classes, so a user calls ``scheme.create_transport(...)`` as TorchRL documents it,
while the core never imports, inherits or calls the layer. :func:`add_calls` only adds: a name
the class already has is refused, so a layer can never change what the core does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Calls = TypeVar("Calls", bound=type)


def add_calls(target: type) -> Callable[[Calls], Calls]:
    """Class decorator: copy the methods and properties the decorated class defines onto
    ``target``. TypeError when ``target`` (or a base of it) already has one of those names.

    Example:
        >>> class Core:
        ...     def run(self):
        ...         return 1
        >>> @add_calls(Core)
        ... class Aliases:
        ...     def start(self):
        ...         return self.run()
        >>> Core().start()
        1
    """

    def add(calls: Calls) -> Calls:
        own = {k: v for k, v in vars(calls).items() if not k.startswith("__")}
        clashes = sorted(name for name in own if hasattr(target, name))
        if clashes:
            raise TypeError(
                f"{calls.__name__} would replace {target.__name__}'s own {clashes}; a "
                "compatibility layer may only add calls"
            )
        for name, value in own.items():
            setattr(target, name, value)
        return calls

    return add
