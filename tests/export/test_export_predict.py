"""``domainfm predict FILE.onnx|FILE.pt2`` goes through the domain's readers, sliding windows/tiles and writers:
the written prediction equals the checkpoint's, in the source geometry."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import rasterio

import domainfm
from domainfm.cli import main as cli_main
from domainfm.pathology.synthetic import write_synthetic_slide
from tests.export.conftest import quiet


def _cli_predict(model, source, out) -> None:
    with pytest.raises(SystemExit) as exc, quiet():
        cli_main(["predict", str(model), "--input", str(source), "--out", str(out)])
    assert exc.value.code in (0, None)


def test_a_nifti_segmentation_through_onnx_equals_the_checkpoints(cases, exported, tmp_path):
    c = cases("medical_3d")
    scan = c["example"].predict_input
    ref = domainfm.predict(c["seg"], scan, tmp_path / "ref.nii.gz", save_probabilities=True)
    got = domainfm.predict(
        exported("medical_3d", "seg", "onnx"), scan, tmp_path / "got.nii.gz", save_probabilities=True
    )
    a, b = nib.load(ref), nib.load(got)
    assert np.allclose(a.affine, b.affine) and a.shape == b.shape == nib.load(scan).shape
    assert (np.asarray(a.dataobj) == np.asarray(b.dataobj)).mean() >= 0.999
    pa, pb = (np.asarray(nib.load(str(p).replace(".nii", "_probs.nii")).dataobj) for p in (ref, got))
    assert np.abs(pa - pb).max() <= 1e-4


def test_a_geotiff_segmentation_through_the_cli_keeps_crs_transform_and_labels(cases, exported, tmp_path):
    c = cases("remote_sensing")
    scene = c["example"].predict_input
    ref = domainfm.predict(c["seg"], scene, tmp_path / "ref.tif")
    _cli_predict(exported("remote_sensing", "seg", "onnx"), scene, tmp_path / "got.tif")
    with rasterio.open(ref) as a, rasterio.open(tmp_path / "got.tif") as b, rasterio.open(scene) as src:
        assert a.crs == b.crs == src.crs and a.transform == b.transform == src.transform
        la, lb = a.read(1), b.read(1)
    assert la.shape == lb.shape and (la == lb).mean() >= 0.999
    assert len(np.unique(la)) > 1  # a map with several classes, not a constant


def test_a_slide_gets_its_heatmap_and_tile_scores_through_pt2(cases, exported, tmp_path):
    c = cases("pathology")
    slide = write_synthetic_slide(tmp_path / "slide.tif", (256, 192), mpp=0.5, seed=3, tumor=True)
    ref = domainfm.predict(c["cls"], slide, tmp_path / "ref" / "slide.png")
    got = domainfm.predict(exported("pathology", "cls", "pt2"), slide, tmp_path / "got" / "slide.png")
    assert got.is_file() and got.stat().st_size > 0

    def scores(png):
        with open(png.with_suffix(".tiles.csv"), newline="") as f:
            return np.array([[float(v) for k, v in row.items() if k.startswith("p_")] for row in csv.DictReader(f)])

    assert scores(ref).shape == scores(got).shape and np.abs(scores(ref) - scores(got)).max() <= 1e-4
