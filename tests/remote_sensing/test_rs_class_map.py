"""Class maps come from the label rasters themselves, not from sampled chips: a class only a few pixels
carry (outside every chip the sampler draws) is a training class, so validation never meets a label
value the map lacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from domainfm.classmap import map_labels, resolve_classes
from domainfm.demo import sample_data
from domainfm.remote_sensing.datasets import Item, RasterChipDataset
from domainfm.remote_sensing.io import raster_values
from domainfm.remote_sensing.synthetic import write_mask, write_scene

SLOVENIA = sample_data("remote_sensing", "eolearn_slovenia")


def _chips(scene, mask=None) -> RasterChipDataset:
    items = [Item(scene, "sentinel2", mask=mask)]
    return RasterChipDataset(items, {"sentinel2": ["B02", "B03"]}, 16, chips_per_scene=3, seed=0)


def test_a_rare_class_outside_every_sampled_chip_is_in_the_class_map(tmp_path):
    scene, _ = write_scene(tmp_path / "scene.tif", "sentinel2", ["B02", "B03"], size=(96, 96), nodata=None)
    covered = np.zeros((96, 96), bool)
    for s in _chips(scene):  # the chips the sampler draws (a pure function of seed, epoch and index)
        c, r, w, h = s["meta"]["window"]
        covered[r : r + h, c : c + w] = True
    rows, cols = np.nonzero(~covered)
    assert len(rows) > 3, "the sampled chips cover the whole scene"
    labels = np.arange(96)[:, None] // 32 + np.zeros((1, 96), np.int64)  # classes 0, 1, 2 in bands of rows
    labels[rows[:3], cols[:3]] = 7  # a rare class, 3 pixels that no sampled chip holds
    mask = write_mask(tmp_path / "mask.tif", labels, scene)
    ds = _chips(scene, mask)
    assert 7 not in {int(v) for s in ds for v in torch.unique(s["mask"])}  # chip sampling would miss it
    assert raster_values(mask) == [0, 1, 2, 7]
    n, names, class_map = resolve_classes(ds, "segmentation", where=mask)
    assert class_map.ids == [0, 1, 2, 7] and n == 4 and names[-1] == "label_7"
    # a validation chip that holds the rare class maps (strictly) to a training index
    window = {"mask": torch.as_tensor(labels[rows[0] : rows[0] + 1, cols[0] : cols[0] + 2])}
    assert 3 in map_labels([window], class_map, "segmentation")[0]["mask"].flatten().tolist()


def test_mask_nodata_is_not_a_class(tmp_path):
    scene, _ = write_scene(tmp_path / "scene.tif", "sentinel2", ["B02", "B03"], size=(32, 32), nodata=None)
    labels = np.full((32, 32), 255, np.int64)  # 255: the mask's nodata
    labels[:8] = 3
    ds = _chips(scene, write_mask(tmp_path / "mask.tif", labels, scene, nodata=255))
    assert ds.label_values() == [3]


@pytest.mark.skipif(
    SLOVENIA is None, reason="eolearn_slovenia sample absent: ../shared/data (or DOMAINFM_DATA) not here"
)
def test_real_slovenia_labels_keep_the_11_pixel_class(tmp_path):
    from domainfm.registry import get_domain
    from domainfm.remote_sensing.demo import clear_dates, load_slovenia, write_slovenia_dates
    from domainfm.remote_sensing.io import write_geotiff
    from domainfm.runconfig import load_config

    patch = load_slovenia(SLOVENIA)
    assert int((patch["lulc"] == 1).sum()) == 11  # the rare class of the real labels
    dates = write_slovenia_dates(SLOVENIA, tmp_path, dates=clear_dates(patch["valid"], 1))
    lulc = write_geotiff(tmp_path / "lulc_raw.tif", patch["lulc"].astype(np.uint16), patch["grid"])
    (tmp_path / "labels.csv").write_text(f"image,mask\n{dates['paths'][0]},{lulc}\n")
    options = {
        "sensor": dates["sensor"],
        "bands": ["NDVI"],
        "sensors_file": dates["sensors_file"],
        "chips_per_scene": 2,
        "stats": "none",
    }
    cfg = load_config(
        {
            "domain": "remote_sensing",
            "data": {"path": str(tmp_path / "labels.csv"), "img_size": 32, "options": options},
            "finetune": {"task": "segmentation"},
        }
    )
    train = get_domain("remote_sensing").dataset(cfg, "train")
    sampled = {int(v) for s in train for v in torch.unique(s["mask"])}
    _, _, class_map = resolve_classes(train, "segmentation", where=lulc)
    assert class_map.ids == [0, 1, 2, 3, 4, 8], f"sampled chips held {sorted(sampled)}"
    every_pixel = torch.as_tensor(patch["lulc"].astype(np.int64))
    assert class_map.to_index(every_pixel, lulc).max().item() == 5  # every real label maps, class 1 included
