"""The structural rules of docs/architecture.md, read from the source."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fastmtl"
# Build artefacts, not modules: the compiled extension and what setup.py writes about it.
GENERATED = {"_C", "_build_info"}
MAX_LINES = 450


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in GENERATED


def _internal_imports(path: Path):
    """``(line, module parts, imported names)`` of the imports of fastmtl's own modules in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                parts = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "fastmtl":
                parts = node.module.split(".")
            else:
                continue
            yield node.lineno, parts, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "fastmtl":
                    yield node.lineno, a.name.split("."), []


def test_no_module_imports_a_private_name_of_another():
    offences = []
    for path in _modules():
        for line, parts, names in _internal_imports(path):
            private = [p for p in parts[1:] if _private(p)] + [n for n in names if _private(n)]
            if private:
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {'.'.join(parts)} {private}")
    assert not offences, "\n".join(offences)


def test_no_file_is_over_the_line_limit():
    long = [f"{p.relative_to(PACKAGE.parent)}: {n}" for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)


def test_only_ops_selects_a_backend():
    offences = []
    for path in _modules():
        if "ops" in path.relative_to(PACKAGE).parts[:-1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if name in ("select", "implementations"):
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} uses {name}")
    assert not offences, "\n".join(offences)
