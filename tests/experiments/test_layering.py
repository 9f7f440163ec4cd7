"""The framework's layers point one way: ``run.py`` -> ``experiments/*.py`` and
``experiments/bench`` -> ``experiments/common`` -> ``weightsync``; nothing imports upward, and
no import hides inside a function to dodge a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, at module level)`` for every ``experiments.*`` import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(name, id(node) in top) for name in names if name.startswith("experiments")]
    return found


def _modules(package: str) -> list[Path]:
    return sorted((EXPERIMENTS / package).glob("*.py"))


@pytest.mark.parametrize("path", _modules("bench"), ids=lambda p: p.name)
def test_the_benchmark_imports_only_itself_and_the_common_layer(path: Path) -> None:
    for module, _ in _imports(path):
        assert module.startswith(("experiments.bench", "experiments.common")), (
            f"{path.name} imports {module}, above experiments/bench"
        )


@pytest.mark.parametrize("path", _modules("common"), ids=lambda p: p.name)
def test_the_common_layer_imports_neither_program(path: Path) -> None:
    for module, _ in _imports(path):
        assert module.startswith("experiments.common"), f"{path.name} imports {module}"


@pytest.mark.parametrize(
    "path", sorted(EXPERIMENTS.rglob("*.py")), ids=lambda p: str(p.relative_to(EXPERIMENTS))
)
def test_no_module_imports_the_framework_lazily(path: Path) -> None:
    lazy = [module for module, at_top in _imports(path) if not at_top]
    assert not lazy, f"{path.name} imports {lazy} inside a function: a cycle being worked around"
