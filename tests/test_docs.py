"""The docs stay true to the code they name: every test cited as ``tests/FILE.py::NAME`` exists
(a renamed or deleted test must take its citation with it), and every relative link in the
README and ``docs/`` leads to a file that exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test_")}


def test_docs_exist() -> None:
    for name in ("cli", "library", "guarantees", "server", "design", "performance"):
        assert (ROOT / "docs" / f"{name}.md").is_file(), name
    assert all(doc.is_file() for doc in DOCS)


def test_every_test_named_in_the_docs_exists() -> None:
    cited = 0
    for doc in DOCS:
        for file, name in re.findall(r"tests/(test_\w+\.py)::(test_\w+)", doc.read_text()):
            path = ROOT / "tests" / file
            assert path.is_file(), f"{doc.name}: tests/{file} does not exist"
            assert name in _test_names(path), f"{doc.name}: tests/{file}::{name} does not exist"
            cited += 1
    assert cited > 100, cited  # the docs do cite their tests
    for doc in DOCS:  # whole files cited alone exist too
        for file in re.findall(r"`tests/(test_\w+\.py)`", doc.read_text()):
            assert (ROOT / "tests" / file).is_file(), f"{doc.name}: tests/{file}"


def test_relative_links_resolve() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)}: {target}"
