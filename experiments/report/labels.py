"""Short labels for a sweep's jobs: only the overrides that tell them apart, numbers rounded.

A sweep's overrides are long: the Optuna sweeper writes floats with 17 digits
(``learner.ent_coef=0.012442175420796637``) and every job repeats the overrides they all share
(``hparams_search=ppo_optuna experiment=smoke``). A label keeps the overrides that differ
between the labelled items, floats to 3 significant digits, a dotted key by its last part where
that part is unambiguous (``ent_coef=0.0124``); the full overrides stay in the tables.
"""

from __future__ import annotations

from collections.abc import Sequence

SIGNIFICANT_DIGITS = 3
MAX_LABEL_CHARS = 48  # longer labels are cut (with "…"); the job number still names the job


def differing(override_lists: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each list of overrides without those every list has (all of them for a single list)."""
    if len(override_lists) < 2:
        return [list(overrides) for overrides in override_lists]
    shared = set.intersection(*(set(overrides) for overrides in override_lists))
    return [[o for o in overrides if o not in shared] for overrides in override_lists]


def short_labels(override_lists: Sequence[Sequence[str]]) -> list[str]:
    """One label per list: its differing overrides, shortened (``""`` when none differ)."""
    kept = differing(override_lists)
    keys = {_key(o) for overrides in kept for o in overrides}
    tails = [key.rsplit(".", 1)[-1] for key in keys]
    unambiguous = {key for key in keys if tails.count(key.rsplit(".", 1)[-1]) == 1}
    return [_cut(" ".join(_short(o, unambiguous) for o in overrides)) for overrides in kept]


def _key(override: str) -> str:
    return override.split("=", 1)[0]


def _short(override: str, unambiguous: set[str]) -> str:
    key, _, value = override.partition("=")
    if key in unambiguous:
        prefix = key[: len(key) - len(key.lstrip("+~"))]
        key = prefix + key.rsplit(".", 1)[-1]
    return f"{key}={short_number(value)}"


def short_number(value: str) -> str:
    """``value`` with a float written to 3 significant digits; anything else as it was."""
    try:
        int(value)
        return value
    except ValueError:
        pass
    try:
        return f"{float(value):.{SIGNIFICANT_DIGITS}g}"
    except ValueError:
        return value


def _cut(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"
