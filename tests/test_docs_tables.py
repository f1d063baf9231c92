"""The README's methods table lists exactly the registered methods."""

from __future__ import annotations

import re
from pathlib import Path

from fastmtl.methods import METHODS

README = Path(__file__).resolve().parents[1] / "README.md"


def _methods_table_names() -> list:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Methods\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.M)


def test_readme_methods_table_matches_the_registry():
    names = _methods_table_names()
    assert len(names) == len(set(names)), "a method has two rows"
    assert sorted(names) == sorted(METHODS), (sorted(set(METHODS) - set(names)), sorted(set(names) - set(METHODS)))
