"""Helpers of the robustness suite: run the CLI in-process, check the one-line error, and check that
inputs and earlier checkpoints are byte-identical afterwards."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from domainfm.cli import main as cli_main


def digest(*roots) -> dict[str, str]:
    """sha256 of every file under ``roots`` (files or folders), keyed by path."""
    out = {}
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of ``domainfm ARGV`` run in this process."""
    with pytest.raises(SystemExit) as exc:
        cli_main([str(a) for a in argv])
    return int(exc.value.code or 0), capsys.readouterr().err


def assert_one_line_error(err: str, *names: str) -> str:
    """The error is one ``error:`` line (no traceback) that names each of ``names``; return it."""
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]
