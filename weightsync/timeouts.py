"""The one check every timeout argument goes through, where it is given.

A timeout is a finite number of seconds, greater than zero; a poll (``receive(timeout)``) may also
be zero, to look without waiting. Infinity is refused: it would pass ``> 0`` and then fail deep in
a system call (``OverflowError``), and a wait that may never end is what timeouts exist to rule
out.
"""

from __future__ import annotations

import math
from typing import Any


def check_timeout(value: Any, name: str = "timeout", *, allow_zero: bool = False) -> float:
    """``value`` as a float if it is a valid timeout in seconds; ValueError naming ``name``
    otherwise.

    Example:
        >>> check_timeout(2)
        2.0
        >>> check_timeout(-1)
        Traceback (most recent call last):
        ...
        ValueError: timeout must be a positive number of seconds, got -1
    """
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and math.isfinite(value) and (value > 0 or (allow_zero and value == 0)):
        return float(value)
    if number and math.isinf(value) and value > 0:
        hint = "; waiting forever is not supported: give a large finite number of seconds"
    else:
        hint = " (or 0, to poll without waiting)" if allow_zero else ""
    kind = "non-negative" if allow_zero else "positive"
    raise ValueError(f"{name} must be a {kind} number of seconds, got {value!r}{hint}")
