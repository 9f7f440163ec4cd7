"""The wheel installs the library alone: it requires only torch and tensordict, and holds no
``experiments`` package (the framework runs from a checkout, with its extras)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_requires_torch_and_tensordict_only_and_holds_no_experiments(tmp_path):
    # Built from a copy, so the checkout gets no build/ or egg-info; experiments/ and conf/ are
    # copied too, to show that the wheel leaves them out rather than never seeing them.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("weightsync", "experiments", "conf"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", "dist", str(source)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("weightsync-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()

    requires = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist")]
    unconditional = {_name(r) for r in requires if "extra ==" not in r}
    assert unconditional == {"torch", "tensordict"}, requires
    assert any('extra == "experiments"' in r and r.startswith("hydra-core") for r in requires)
    top_level = {name.split("/", 1)[0] for name in names if not name.startswith("weightsync-")}
    assert top_level == {"weightsync"}, sorted(top_level)


def _name(requirement: str) -> str:
    """The distribution name of a ``Requires-Dist`` value (``torch>=2.3`` -> ``torch``)."""
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower()
