"""`benchmarks/gpu_suite.py --dry` runs every section on the CPU with tiny shapes and writes its two files."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.py"


def _load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_suite_dry_runs_every_section(tmp_path):
    pytest.importorskip("torchgeo", reason="the GeoTIFF loader anchor is TorchGeo")
    suite = _load_suite()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = suite.main([str(tmp_path), "--dry"])
    saved = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert saved["meta"]["dry"] and saved["meta"]["objectives"] == ["mae", "dino"]
    sections = saved["sections"]
    assert set(sections) == {"peak", "pretrain", "loaders", "store", "sliding_window"}
    assert not [r for rows in sections.values() for r in rows if "error" in r], sections
    assert "needs CUDA" in sections["peak"][0]["skipped"]
    steps = [r for r in sections["pretrain"] if "samples_per_s" in r]
    assert {(r["objective"], r["case"][:2], r["impl"]) for r in steps} == {
        ("mae", d, i) for d in ("2D", "3D") for i in ("domainfm", "monai")
    } | {("dino", d, "domainfm") for d in ("2D", "3D")}
    assert all(r["samples_per_s"] > 0 for r in steps)
    assert [r["loader"] for r in sections["loaders"]] == ["WSI tiles", "medical volumes", "GeoTIFF chips"]
    assert all(r["kit_per_s"] > 0 and r["anchor_per_s"] > 0 for r in sections["loaders"] + sections["store"])
    assert [r["loader"] for r in sections["store"]] == ["prepared store (CT crops)"]
    assert [r["stitch_on"] for r in sections["sliding_window"]] == ["device", "host"]
    assert all(r["out_shape"] == r["volume"] for r in sections["sliding_window"])
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "DRY RUN" in md and "## loaders" in md and "| WSI tiles |" in md
    assert result["sections"] == sections
