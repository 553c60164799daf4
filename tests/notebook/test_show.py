"""Objects that show themselves (short repr, HTML) and figures you can hold (written only when asked)."""

from __future__ import annotations

import pytest

import domainfm
from domainfm.eval.report import EvalResult

CFG = {
    "domain": "synthetic",
    "data": {"img_size": 32, "options": {"num_samples": 16}},
    "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
    "objective": {"name": "mae", "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    "train": {"steps": 3, "batch_size": 4, "warmup_steps": 1, "tensorboard": False},
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return domainfm.pretrain({**CFG, "out": str(tmp_path_factory.mktemp("show") / "run")})


def test_model_repr_is_short_and_says_what_feeds_it(ckpt):
    model = domainfm.load(ckpt)
    text = repr(model)
    assert len(text.splitlines()) <= 10 and "Linear(" not in text
    for word in ("synthetic", "pretrain", "depth 1", "dim 32", "1 ch", "patch 8", str(ckpt)):
        assert word in text, (word, text)
    assert "<table>" in model._repr_html_() and "synthetic" in model._repr_html_()
    assert repr(model.domain) == "<domain 'synthetic' (domainfm.synthetic.domain.SyntheticDomain)>"


def test_training_ends_with_one_summary_line(tmp_path, capsys):
    ckpt = domainfm.pretrain({**CFG, "out": str(tmp_path / "run")})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pretrain:")]
    assert len(lines) == 1 and "3 steps, loss " in lines[0] and " -> " in lines[0] and str(ckpt) in lines[0]


def test_reconstruction_is_a_figure_and_no_file_unless_asked(ckpt, tmp_path):
    fig = domainfm.api.reconstruction(ckpt, n=2)
    assert type(fig).__name__ == "Figure" and len(fig.axes) == 6
    assert list(tmp_path.iterdir()) == []
    domainfm.api.reconstruction(ckpt, n=2, path=tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0


def test_eval_result_shows_its_pivot_table_and_plots(tmp_path):
    recs = [
        {
            "encoder": enc,
            "protocol": "knn",
            "fraction": f,
            "shots": None,
            "n_train": 10,
            "metric": "accuracy",
            "mean": m,
            "ci_low": m - 0.05,
            "ci_high": m + 0.05,
            "per_seed": [m],
        }
        for enc, m in (("pretrained", 0.9), ("random", 0.6))
        for f in (0.1, 1.0)
    ]
    res = EvalResult(recs, meta={"checkpoint": "runs/x"})
    text = repr(res)
    assert text.splitlines()[0] == "EvalResult (runs/x): 4 records" and len(text.splitlines()) == 6
    assert "0.900 [0.850, 0.950]" in text and "<table>" in res._repr_html_()
    fig = res.plot()
    assert type(fig).__name__ == "Figure" and list(tmp_path.iterdir()) == []
    res.plot("knn", path=tmp_path / "knn.png")
    assert (tmp_path / "knn.png").is_file()
    with pytest.raises(KeyError, match="it has: knn"):
        res.plot("linear")


def test_tile_grid_shows_counts_mpp_level_and_the_heatmap_is_a_figure(tmp_path):
    pathology = pytest.importorskip("domainfm.pathology")
    slide = pathology.write_synthetic_slide(tmp_path / "s.tif", size=(512, 512), mpp=0.5)
    grid = pathology.tile_slide(slide, target_mpp=1.0, tile_size=32, min_tissue=0.1)
    text = repr(grid)
    assert text.startswith("TileGrid(slide=s.tif, tiles=") and "1 MPP" in text and "level" in text
    assert len(text) < 400 and "<table>" in grid._repr_html_()
    fig = pathology.heatmap_figure(slide, grid.coords, grid.size0, grid.tissue, thumbnail_size=128)
    assert type(fig).__name__ == "Figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]
