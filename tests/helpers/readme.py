"""The README's code examples, as the tests that run them read them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_block_after(heading: str) -> str:
    """The first python block after ``heading`` (a whole line of README.md, e.g.
    ``"## Library example"``); AssertionError naming the heading if there is none."""
    text = README.read_text()
    assert heading in text, f"README.md has no heading {heading!r}"
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"README.md has no python block under {heading!r}"
    return match.group(1)
