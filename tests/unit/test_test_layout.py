"""Test modules share one namespace (rootdir-relative imports, no __init__.py in most test folders), so two
test files with one basename make pytest refuse to collect the second: CI would stop before running a test."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_basename_of_its_own() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    clashes = {name: count for name, count in names.items() if count > 1}
    assert clashes == {}
