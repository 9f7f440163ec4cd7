"""Model ids are paths resolved on a context object.

A model id names where a model lives on the object that owns it (a collector, a trainer, a plain
namespace): ``"policy"``, ``"env.transform[0].module"``, ``'models["critic"]'``. The grammar is
attributes separated by dots, each optionally followed by ``[int]`` or ``["key"]`` subscripts.
"""

from __future__ import annotations

import re
from typing import Any

from weightsync.errors import ModelPathError

_TOKEN = re.compile(
    r"""
    (?P<attr>[A-Za-z_][A-Za-z0-9_]*)          # attribute name
  | \[\s*(?P<index>-?\d+)\s*\]                 # [0]
  | \[\s*(?P<quote>["'])(?P<key>.*?)(?P=quote)\s*\]   # ["key"] or ['key']
  | (?P<dot>\.)
    """,
    re.VERBOSE,
)


def parse_model_id(model_id: str) -> list[str | int]:
    """Split a model id into its steps: attribute names (``str``) and subscripts.

    Integer subscripts become ``int``; quoted subscripts become ``("key",)`` tuples so that an
    attribute named ``key`` and a mapping key ``"key"`` stay distinguishable.
    """
    steps: list[Any] = []
    pos = 0
    expect_attr = True
    while pos < len(model_id):
        match = _TOKEN.match(model_id, pos)
        if match is None or (match.group("dot") and expect_attr):
            raise ModelPathError(
                f"model id {model_id!r} is not a valid path: unexpected text at position {pos} "
                f"({model_id[pos:]!r}). Use attributes separated by dots with [int] or "
                "[\"key\"] subscripts, e.g. 'env.transform[0].module' or 'models[\"critic\"]'."
            )
        if match.group("attr"):
            if not expect_attr:
                raise ModelPathError(
                    f"model id {model_id!r}: missing '.' before {match.group('attr')!r}"
                )
            steps.append(match.group("attr"))
            expect_attr = False
        elif match.group("index") is not None:
            steps.append(int(match.group("index")))
        elif match.group("quote"):
            steps.append((match.group("key"),))
        else:
            expect_attr = True
        pos = match.end()
    if not steps or (expect_attr and pos):
        raise ModelPathError(f"model id {model_id!r} is empty or ends with a dot")
    return steps


def resolve_model_id(context: Any, model_id: str) -> Any:
    """Return the object that ``model_id`` names on ``context``.

    Raises ModelPathError naming the step that failed and what was found there.

    Example:
        >>> from types import SimpleNamespace
        >>> ctx = SimpleNamespace(models={"critic": 42})
        >>> resolve_model_id(ctx, 'models["critic"]')
        42
    """
    obj = context
    walked = ""
    for step in parse_model_id(model_id):
        try:
            if isinstance(step, str):
                obj = getattr(obj, step)
                walked = f"{walked}.{step}" if walked else step
            elif isinstance(step, int):
                obj = obj[step]
                walked = f"{walked}[{step}]"
            else:
                obj = obj[step[0]]
                walked = f"{walked}[{step[0]!r}]"
        except (AttributeError, IndexError, KeyError, TypeError) as err:
            shown = (
                step
                if isinstance(step, str)
                else f"[{step if isinstance(step, int) else repr(step[0])}]"
            )
            raise ModelPathError(
                f"model id {model_id!r} does not resolve: step {shown!r} failed after "
                f"{walked or '<context>'!r} (a {type(obj).__name__}): {err}"
            ) from err
    return obj
