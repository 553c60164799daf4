"""Fast slide reading (raw TIFF tiles, batched reads, read threads) gives the very pixels OpenSlide gives."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import openslide
import pytest
import torch
from PIL import Image

from domainfm.data.sample import collate_samples
from domainfm.pathology.datasets import SlideTileDataset, TileTransform, _to_tensor
from domainfm.pathology.regions import ReaderCache, RegionReader
from domainfm.pathology.slide import read_rgb
from domainfm.pathology.synthetic import synthetic_he_image, write_pyramidal_tiff

SHARED_SVS = (
    Path(os.environ.get("DOMAINFM_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    / "pathology"
    / "tcga-cr-7395-01a-01-ts1.svs"
)


def _boxes(w: int, h: int, size: int):
    """Regions inside, across TIFF tile borders, and hanging over the right/bottom edge of a level."""
    return [(0, 0), (200, 100), (250, 250), (w - size // 2, 10), (10, h - size // 3), (w - 5, h - 5)]


@pytest.mark.parametrize("compression", ["zlib", None])
def test_raw_regions_equal_openslide(tmp_path, compression):
    path = write_pyramidal_tiff(
        tmp_path / "s.tif", synthetic_he_image(640, 768, seed=3), mpp=0.5, compression=compression
    )
    reader = RegionReader(path)
    assert reader.raw_levels == [0, 1]
    slide = openslide.OpenSlide(str(path))
    for level in (0, 1):
        w, h = slide.level_dimensions[level]
        ds = int(slide.level_downsamples[level])
        for size in (64, 97):
            locs = [(x * ds, y * ds) for x, y in _boxes(w, h, size)]
            got = reader.read_many(locs, level, (size, size))
            for loc, arr in zip(locs, got):
                want = np.asarray(read_rgb(slide, loc, level, (size, size)))
                np.testing.assert_array_equal(arr, want, err_msg=f"level {level} at {loc}")


def test_non_whole_level_pixels_and_raw_off_fall_back_to_openslide(slide_dir):
    path = slide_dir / "s0.tif"
    slide = openslide.OpenSlide(str(path))
    reader = RegionReader(path)
    assert reader._raw_box((3, 5), 1, (16, 16)) is None  # 1.5 level-1 pixels: OpenSlide resamples, so it reads
    np.testing.assert_array_equal(reader.read((3, 5), 1, (16, 16)), np.asarray(read_rgb(slide, (3, 5), 1, (16, 16))))
    off = RegionReader(path, raw=False)
    assert off.raw_levels == []
    np.testing.assert_array_equal(off.read((40, 60), 0, (32, 32)), reader.read((40, 60), 0, (32, 32)))


def test_real_svs_jpeg2000_is_read_by_openslide():
    if not SHARED_SVS.exists():
        pytest.skip(f"{SHARED_SVS}: shared data absent (set DOMAINFM_DATA)")
    reader = RegionReader(SHARED_SVS)
    assert reader.raw_levels == []  # JPEG 2000 tiles: not decoded here
    slide = openslide.OpenSlide(str(SHARED_SVS))
    np.testing.assert_array_equal(
        reader.read((1000, 1000), 0, (64, 64)), np.asarray(read_rgb(slide, (1000, 1000), 0, (64, 64)))
    )


def _per_tile_reference(ds: SlideTileDataset, i: int, size: int) -> torch.Tensor:
    """The plain path: OpenSlide read of the tile, PIL resize, [0, 1] float, ImageNet normalization."""
    k, j = (int(v) for v in ds.index[i])
    grid = ds.grids[k]
    rgb = np.asarray(grid.read(openslide.OpenSlide(grid.path), j))
    if rgb.shape[0] != size:
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR, reducing_gap=2.0))
    return (_to_tensor(rgb) - ds.transform.mean) / ds.transform.std


@pytest.mark.parametrize("target_mpp,tile_size,out_size", [(1.0, 64, 64), (0.75, 64, 48)])
def test_batched_dataset_equals_per_tile_openslide_path(slide_dir, tmp_path, target_mpp, tile_size, out_size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = SlideTileDataset(
            [slide_dir / "s0.tif", slide_dir / "s1.tif"],
            target_mpp=target_mpp,
            tile_size=tile_size,
            out_size=out_size,
            min_tissue=0.3,
            read_threads=3,
        )
    grid = ds.grids[0]
    assert (grid.read_size != grid.tile_size) == (target_mpp == 0.75)  # resized reads covered too
    idx = list(range(0, len(ds), 2))
    batch = ds.__getitems__(idx)
    single = [ds[i] for i in idx]
    one_thread = pickle.loads(pickle.dumps(ds))
    one_thread.read_threads = 1
    for i, b, s, o in zip(idx, batch, single, one_thread.__getitems__(idx)):
        ref = _per_tile_reference(ds, i, out_size)
        assert b["image"].shape == (3, out_size, out_size) and b["meta"] == s["meta"]
        assert torch.equal(b["image"], s["image"]) and torch.equal(b["image"], o["image"])
        assert torch.allclose(b["image"], ref, atol=1e-5)  # same pixels; normalization order differs by <= 1 ulp-ish
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=0, collate_fn=collate_samples)
    assert torch.equal(torch.cat([b["image"] for b in loader]), torch.stack([ds[i]["image"] for i in range(len(ds))]))


def test_training_transform_per_tile_in_batches(slide_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = SlideTileDataset(
            [slide_dir / "s2.tif"],
            target_mpp=1.0,
            tile_size=64,
            out_size=32,
            min_tissue=0.3,
            transform=TileTransform(32, train=True, stain_sigma=0.05),
        )
    idx = [0, 3, 1]
    assert all(torch.equal(b["image"], ds[i]["image"]) for i, b in zip(idx, ds.__getitems__(idx)))


def test_reader_cache_follows_evicted_handles(slide_dir):
    cache = ReaderCache(max_open=1)
    r0 = cache.reader(slide_dir / "s0.tif")
    assert cache.reader(slide_dir / "s0.tif") is r0
    cache.reader(slide_dir / "s1.tif")
    r0b = cache.reader(slide_dir / "s0.tif")
    assert r0b is not r0 and r0b.slide is cache.get(slide_dir / "s0.tif") and len(cache) == 1
    assert len(pickle.loads(pickle.dumps(cache))._readers) == 0
    cache.close()


def test_views_wrapper_does_not_expose_the_batched_fetch(slide_dir):
    from domainfm.data.views import ViewsDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = SlideTileDataset([slide_dir / "s0.tif"], target_mpp=1.0, tile_size=64, out_size=32, min_tissue=0.3)
    views = ViewsDataset(ds, lambda x, g: x.flip(-1), n_views=2)
    assert hasattr(ds, "__getitems__") and not hasattr(views, "__getitems__")  # else DataLoader skips the views
    batch = next(iter(torch.utils.data.DataLoader(views, batch_size=4, collate_fn=collate_samples)))
    assert len(batch["views"]) == 2 and torch.equal(batch["views"][0], batch["image"].flip(-1))
