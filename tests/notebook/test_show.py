"""Objects that show themselves (short repr, HTML) and figures you can hold (written only when asked)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

import domainfm
from domainfm.eval.report import EvalResult
from tests.notebook.test_examples import kernel_name  # noqa: F401  (a fixture: a kernel running this interpreter)

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
    ckpt = domainfm.pretrain({**CFG, "out": str(tmp_path / "run"), "train": {**CFG["train"], "log_every": 1}})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pretrain:")]
    assert len(lines) == 1 and "3 steps, loss " in lines[0] and str(ckpt) in lines[0]
    first, last = (float(v) for v in lines[0].split("loss ")[1].split(",")[0].split(" -> "))
    logged = [r.split(",") for r in (tmp_path / "run" / "metrics.csv").read_text().splitlines() if ",loss," in r]
    assert (first, last) == (
        pytest.approx(float(logged[0][2]), rel=1e-3),
        pytest.approx(float(logged[-1][2]), rel=1e-3),
    )
    assert logged[0][0] == "1" and logged[-1][0] == "3"  # first and last from distinct steps


def test_a_run_that_logged_one_loss_says_so(tmp_path, capsys):
    domainfm.pretrain({**CFG, "out": str(tmp_path / "run"), "train": {**CFG["train"], "log_every": 10}})
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("pretrain:"))
    assert " -> " not in line and "(only one value logged)" in line, line


def test_reconstruction_is_a_figure_that_shows_itself_and_no_file_unless_asked(ckpt, tmp_path):
    import matplotlib.figure

    fig = domainfm.api.reconstruction(ckpt, n=2)
    assert type(fig).__name__ == "Figure" and isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:3]] == ["input", "masked", "reconstruction"]
    assert fig._repr_png_()[:4] == b"\x89PNG"  # what a notebook shows, without %matplotlib or pyplot
    assert list(tmp_path.iterdir()) == []
    domainfm.api.reconstruction(ckpt, n=2, path=tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0


def test_the_run_folder_reconstruction_png_has_column_titles(ckpt):
    import numpy as np
    from PIL import Image

    png = np.asarray(Image.open(ckpt.parent / "reconstruction.png").convert("L"))
    cells = png.shape[1] // 3
    band = png[:12]  # the title band above the images: white paper with dark letters in each column
    assert (band > 200).mean() > 0.6
    assert all((band[:, j * cells : (j + 1) * cells] < 100).any() for j in range(3))


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
    assert fig._repr_png_()[:4] == b"\x89PNG"
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
    assert type(fig).__name__ == "Figure" and fig._repr_png_()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]
    pathology.heatmap_figure(slide, grid.coords, grid.size0, grid.tissue, thumbnail_size=128, path=tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"  # still a file when given a path


def test_figures_render_as_png_with_no_backend_set_up(tmp_path):
    """In a fresh interpreter (as in a fresh kernel): no pyplot, no backend, no %matplotlib magic."""
    code = (
        "import sys; from domainfm.eval.report import EvalResult\n"
        "rec = {'encoder': 'pretrained', 'protocol': 'knn', 'fraction': 1.0, 'shots': None, 'n_train': 4,"
        " 'metric': 'accuracy', 'mean': 0.9, 'ci_low': 0.8, 'ci_high': 1.0, 'per_seed': [0.9]}\n"
        "png = EvalResult([rec]).plot()._repr_png_()\n"
        "assert png[:4] == b'\\x89PNG', png[:8]\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_notebook_progress_bar_leaves_its_final_state_as_text(capsys):
    from tqdm.std import tqdm

    from domainfm.display import finish_progress

    class NotebookBar(tqdm):  # what tqdm.auto gives in a kernel (a widget a saved notebook does not keep)
        pass

    NotebookBar.__module__ = "tqdm.notebook"
    bar = NotebookBar(total=3, desc="train", file=io.StringIO())
    bar.update(3)
    finish_progress(bar)
    assert "train: 100%" in capsys.readouterr().out and "3/3" in str(bar)
    plain = tqdm(total=2, file=io.StringIO())
    plain.update(2)
    finish_progress(plain)  # a text bar already left its last state: nothing printed twice
    assert capsys.readouterr().out == ""


def test_crs_is_shown_as_its_epsg_code(tmp_path):
    import numpy as np

    from domainfm.outputs import Prediction, read_prediction

    rs = pytest.importorskip("domainfm.remote_sensing.synthetic")
    path, _ = rs.write_scene(tmp_path / "s.tif", "sentinel2", ["B02"], size=(16, 16), crs="EPSG:32633")
    pred = read_prediction(path)
    assert pred.geometry["crs"] == "EPSG:32633" and "crs=EPSG:32633" in repr(pred)
    wkt = 'PROJCS["WGS 84 / UTM zone 33N",GEOGCS["WGS 84",AUTHORITY["EPSG","4326"]],AUTHORITY["EPSG","32633"]]'
    assert "crs=EPSG:32633" in repr(Prediction(np.zeros((2, 2)), {"crs": wkt}))


def test_a_kit_error_in_a_notebook_is_one_line_and_where_it_was_raised(monkeypatch):
    from domainfm.errors import ConfigError
    from domainfm.registry import get_domain

    monkeypatch.delenv("DOMAINFM_DEBUG", raising=False)
    with pytest.raises(ConfigError) as exc:
        get_domain("pathalogy")
    err = exc.value
    assert "did you mean 'pathology'?" in str(err)
    lines = err._render_traceback_()
    assert len(lines) == 2 and lines[0].startswith("ConfigError: unknown domain 'pathalogy'")
    assert "registry.py:" in lines[1] and "in get_domain" in lines[1] and "domainfm.debug(True)" in lines[1]
    domainfm.debug(True)  # the full traceback: IPython shows its own when the hook is absent
    try:
        assert not hasattr(err, "_render_traceback_")
    finally:
        domainfm.debug(False)
    assert hasattr(err, "_render_traceback_")
    monkeypatch.setenv("DOMAINFM_DEBUG", "1")
    assert not hasattr(err, "_render_traceback_")


def test_errors_for_a_python_user_name_python_arguments_and_suggest_the_closest_choice(ckpt):
    from domainfm.errors import UnsupportedError
    from domainfm.registry import get_encoder_arch, get_objective

    with pytest.raises(UnsupportedError) as exc:  # asked before the options: not "unknown key overlap"
        domainfm.predict(ckpt, "scan.png", overlap=0.5)
    msg = str(exc.value)
    assert "does not offer predict" in msg and "domainfm.load" in msg and "overlap" not in msg
    for lookup, wrong, right in ((get_encoder_arch, "vit-smal", "vit-small"), (get_objective, "dinoo", "dino")):
        with pytest.raises(domainfm.ConfigError, match=f"did you mean '{right}'"):
            lookup(wrong)
    with pytest.raises(domainfm.ConfigError, match="did you mean 'mae'") as exc:
        domainfm.pretrain({**CFG, "out": "never", "objective": {"name": "maee"}})
    assert "--" not in str(exc.value)


def test_in_a_fresh_kernel_figures_show_bars_end_as_text_and_errors_are_one_line(tmp_path, kernel_name):  # noqa: F811
    """A real kernel, no ``%matplotlib`` magic: a returned figure is an image, a training bar leaves its final
    state in the saved outputs, and a kit error shows as its line and where it was raised."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cfg = {**CFG, "out": "run", "train": {**CFG["train"], "steps": 2}}
    cells = [
        "import domainfm\nfrom domainfm.viz import new_figure\nfig = new_figure(figsize=(2, 2))\n"
        "fig.subplots().plot([0, 1])\nfig",
        f"ckpt = domainfm.pretrain({cfg!r})",
        "domainfm.registry.get_domain('pathalogy')",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name=kernel_name, allow_errors=True, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    figure, training, error = (c.outputs for c in nb.cells)
    assert any("image/png" in o.get("data", {}) for o in figure), figure
    text = "".join(o.get("text", "") for o in training if o.get("output_type") == "stream")
    assert "train: 100%" in text and "2/2" in text, training  # the bar's last state, as text
    (err,) = [o for o in error if o.get("output_type") == "error"]
    assert err["ename"] == "ConfigError" and "did you mean 'pathology'" in err["evalue"]
    assert len(err["traceback"]) == 2 and "in get_domain" in err["traceback"][1], err["traceback"]
