"""The examples in weightsync's docstrings run and show what they claim."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import weightsync


def _modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(weightsync.__path__, prefix="weightsync.")
        if not info.ispkg
    )


def test_the_main_classes_carry_examples():
    finder = doctest.DocTestFinder()
    with_examples = {
        test.name.rsplit(".", 1)[-1]
        for name in _modules()
        for test in finder.find(importlib.import_module(name))
        if test.examples
    }
    for cls in (
        "WeightStrategy",
        "NoWeightSyncScheme",
        "MultiProcessWeightSyncScheme",
        "ModelGroup",
    ):
        assert cls in with_examples, f"{cls}'s docstring has no runnable example"


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
