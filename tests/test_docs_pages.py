"""Every domain page of ``docs/`` runs: its ```python blocks are executed in order, in one namespace,
in a temporary working folder, on the small files the page itself writes first.

```bash``` / ```yaml``` blocks are shown, not run; a ```py block is an excerpt of a file shown for
reading (e.g. a plugin's source), not a cell.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["core", "medical", "remote_sensing", "pathology", "evaluation", "deploy", "store"]
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of each ```python fenced block of a Markdown page."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def test_blocks_are_found_with_their_line_numbers():
    text = "# t\n\n```python\nx = 1\n```\n\n```bash\nrm -rf /\n```\n```python\ny = x + 1\n```\n"
    assert python_blocks(text) == [(4, "x = 1\n"), (11, "y = x + 1\n")]


@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page, tmp_path, monkeypatch):
    path = DOCS / f"{page}.md"
    blocks = python_blocks(path.read_text())
    assert blocks, f"{path} has no ```python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page}"}
    for line, code in blocks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                exec(compile(code, f"{path}:{line}", "exec", dont_inherit=True), namespace)
            except Exception as exc:  # name the page and block, keep the traceback
                raise AssertionError(
                    f"docs/{page}.md, ```python block at line {line}: {type(exc).__name__}: {exc}"
                ) from exc
