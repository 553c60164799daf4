"""A scene larger than memory streams through predict: a sparse 20000 x 20000 x 3 GeoTIFF (4.8 GB as
float32, a few MB on disk) predicted in a child process whose peak RSS is read from the OS (no timing);
an interrupted resumable predict continues from the rows it recorded."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from benchmarks.remote_sensing_predict_memory import run_predict
from domainfm.remote_sensing.predict import predict_scene
from domainfm.remote_sensing.synthetic import write_scene, write_sparse_scene
from tests.remote_sensing.test_rs_predict_heads import PixelModel, _card

SIZE = 20000
PEAK_GB = 1.6  # the child imports torch (~0.8 GB); the scene alone would be 4.8 GB as float32


def test_sparse_scene_larger_than_memory_streams_with_bounded_memory(tmp_path):
    scene = write_sparse_scene(tmp_path / "big.tif", SIZE, patches=6)
    assert scene.stat().st_size < 20_000_000
    out = tmp_path / "pred.tif"
    figures = run_predict(scene, out, chip=64)
    peak_gb = figures["maxrss_kb"] * 1024 / 1e9  # the child's own high-water mark (VmHWM)
    assert peak_gb < PEAK_GB, f"peak RSS {peak_gb:.2f} GB"
    with rasterio.open(scene) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.shape == (SIZE, SIZE)
        assert dst.profile["tiled"] and dst.compression is not None and dst.overviews(1)
        assert dst.nodata == 255
        # where the input has data the output has classes, elsewhere nodata
        block = next(w for _, w in src.block_windows(1) if src.get_tag_item(
            f"BLOCK_OFFSET_{int(w.col_off) // 512}_{int(w.row_off) // 512}", "TIFF", bidx=1))  # fmt: skip
        has = src.read(1, window=block) != 0
        pred = dst.read(1, window=block)
        assert (pred[has] < 3).all() and (pred[~has] == 255).all()
        assert dst.read(1, window=((0, 64), (0, 64)), out_shape=(8, 8)).shape == (8, 8)


def test_resumable_predict_continues_after_an_interruption(tmp_path):
    path, _ = write_scene(tmp_path / "scene.tif", "sentinel2", ["B02", "B03", "B04", "B08"], size=(300, 280))
    reference = PixelModel(_card())

    def same(model):  # PixelModel's bias is drawn before its seed: every model gets the reference's weights
        model.load_state_dict(reference.state_dict())
        return model

    class Dies(PixelModel):
        def logits(self, x, wavelengths=None):
            if len(self.calls) == 12:
                raise KeyboardInterrupt
            return super().logits(x, wavelengths)

    full = same(PixelModel(_card()))
    whole = predict_scene(full, path, tmp_path / "whole.tif", batch_size=2)
    out = tmp_path / "pred.tif"
    with pytest.raises(KeyboardInterrupt):
        predict_scene(same(Dies(_card())), path, out, resume=True, batch_size=2)
    partial = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".partial-"))
    assert partial == [".partial-pred.tif", ".partial-pred.tif.json"] and not out.exists()
    model = same(PixelModel(_card()))
    predict_scene(model, path, out, resume=True, batch_size=2)
    assert 0 < sum(c[0][0] for c in model.calls) < sum(c[0][0] for c in full.calls)  # fewer tiles the second time
    with rasterio.open(whole) as a, rasterio.open(out) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial-")]
    # without resume an interrupted predict leaves nothing
    with pytest.raises(KeyboardInterrupt):
        predict_scene(same(Dies(_card())), path, tmp_path / "p2.tif", batch_size=2)
    assert not [p for p in tmp_path.iterdir() if "p2" in p.name]
