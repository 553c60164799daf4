"""Arrays out: ``predict`` without an output path returns the prediction with its geometry (and leaves no
file), the same as the file it writes when given one; ``embed`` without ``out`` returns a DataFrame."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import domainfm
from domainfm.outputs import Prediction, read_prediction
from domainfm.registry import get_domain

PREDICTING = ["medical", "remote_sensing", "pathology"]


@pytest.mark.parametrize("name", PREDICTING)
def test_predict_returns_the_array_with_its_geometry(name, tmp_path):
    domain = get_domain(name)
    example = domain.example(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt = domainfm.pretrain(example.config)
        tuned = domainfm.finetune(
            ckpt,
            task=example.task,
            out=tmp_path / "finetune",
            overrides=example.finetune_overrides,
            **example.finetune_kwargs,
        )
        before = sorted(p.name for p in tmp_path.rglob("*"))
        pred = domainfm.predict(tuned, example.predict_input)
        after = sorted(p.name for p in tmp_path.rglob("*"))
        written = domainfm.predict(tuned, example.predict_input, tmp_path / f"prediction{example.predict_suffix}")
    assert before == after  # nothing written without an output path
    assert isinstance(pred, Prediction) and pred.array.size > 0
    on_disk = read_prediction(written)
    np.testing.assert_array_equal(pred.array, on_disk.array)
    assert pred.geometry == on_disk.geometry and pred.geometry  # affine / CRS + transform / tile coordinates
    assert "Prediction(" in repr(pred) and "<table>" in pred._repr_html_()


@pytest.mark.parametrize("name", ["remote_sensing", "pathology"])
def test_embed_without_out_is_a_frame_of_the_files(name, tmp_path):
    pd = pytest.importorskip("pandas")
    example = get_domain(name).example(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt = domainfm.pretrain(example.config)
        before = sorted(p.name for p in tmp_path.rglob("*"))
        frame = domainfm.embed(ckpt, example.config["data"]["path"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written without out
    assert isinstance(frame, pd.DataFrame) and len(frame) > 0 and frame["id"].astype(str).str.len().min() > 0
    assert frame.filter(regex=r"^z\d+$").shape[1] == domainfm.load(ckpt).encoder.embed_dim
    if name == "pathology":  # one row per tile: its slide and level-0 coordinates
        assert {"slide", "x", "y"} <= set(frame.columns) and frame["slide"].nunique() > 1
