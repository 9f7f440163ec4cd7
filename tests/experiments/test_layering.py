"""The framework's layers point one way: ``run.py`` -> ``experiments/*.py`` and
``experiments/bench`` -> ``experiments/common`` -> ``weightsync``; nothing imports upward, and
no import hides inside a function to dodge a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
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


def test_a_spawned_worker_imports_neither_tensordict_nor_the_trainer() -> None:
    """What a worker of ``python run.py`` imports before it runs: ``run.py`` itself (spawn runs
    the parent's main file as ``__mp_main__``) and the module of its target. Each second of import
    is paid once per worker per run; tensordict (it imports ``torch._dynamo``) and the trainer's
    modules are seconds a worker never uses."""
    root = EXPERIMENTS.parent
    probe = (
        "import runpy, sys; "
        f"runpy.run_path({str(root / 'run.py')!r}, run_name='__mp_main__'); "
        "import experiments.pool; "
        "print(' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    imported = set(done.stdout.split())
    assert "experiments.pool" in imported  # the probe did import the worker's side
    unwanted = {"tensordict", "experiments.train", "experiments.job", "matplotlib"}
    assert not imported & unwanted, f"a worker imports {sorted(imported & unwanted)}"
