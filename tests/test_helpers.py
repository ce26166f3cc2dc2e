"""The suite's own rules: what test files share lives in tests/helpers.py, never in another test file
(a test file imported by another runs its module-level code twice, under two names, and ties the two
files' tests together)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TEST_FILES = sorted(TESTS.glob("test_*.py"))


def imported_modules(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports, wherever the import statement is."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.stem)
def test_a_test_file_imports_no_other_test_file(path):
    test_modules = {p.stem for p in TEST_FILES}
    assert not imported_modules(path) & test_modules, f"{path.name} imports a test file; share through helpers.py"


def test_the_rule_sees_imports_anywhere(tmp_path):
    src = tmp_path / "test_x.py"
    src.write_text("import os\ndef f():\n    from test_resume import a\n    import test_train as t\n")
    assert imported_modules(src) == {"os", "test_resume", "test_train"}
