"""Every docstring example of the package and its plugins runs: ``>>>`` lines are tests."""

from __future__ import annotations

import doctest
import importlib

import pytest

from tests.architecture.importgraph import ROOT, kit_modules

MODULES = sorted(kit_modules())
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    module = importlib.import_module(name)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
        if test.examples:
            runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
