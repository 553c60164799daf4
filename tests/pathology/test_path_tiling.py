"""Tissue detection, MPP-aware tile grids, their CSV cache, and the bad inputs of tiling."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
from PIL import Image

from domainfm.errors import DataError
from domainfm.pathology.slide import open_slide, read_rgb
from domainfm.pathology.synthetic import synthetic_he_image, write_pyramidal_tiff
from domainfm.pathology.tiling import NoTissueError, cached_tile_grid, grid_csv_path, load_grid, tile_slide
from domainfm.pathology.tissue import box_fractions, tissue_mask


def _half_tissue_image():
    rgb = np.full((256, 256, 3), 244, np.uint8)
    rgb[:, :128] = synthetic_he_image(256, 128, seed=5, tissue_fraction=1.0)
    return rgb


def test_tissue_mask_finds_stained_half_and_nothing_on_blank():
    mask = tissue_mask(_half_tissue_image())
    assert mask[:, :120].mean() > 0.95 and mask[:, 136:].mean() < 0.01
    blank = synthetic_he_image(128, 128, seed=1, blank=True)
    assert tissue_mask(blank).sum() == 0
    assert box_fractions(mask, np.array([[0, 0, 128, 256], [128, 0, 256, 256]])).round(1).tolist() == [1.0, 0.0]


def test_tile_grid_geometry_picks_pyramid_level(tmp_path):
    rgb = np.full((1024, 1024, 3), 244, np.uint8)
    rgb[:, :512] = synthetic_he_image(1024, 512, seed=7, tissue_fraction=1.0)
    path = write_pyramidal_tiff(tmp_path / "half.tif", rgb, mpp=0.25, levels=3)
    grid = tile_slide(path, target_mpp=0.5, tile_size=64, min_tissue=0.5)
    # 64 px at 0.5 µm/px = 128 level-0 px at 0.25 µm/px, read from level 1 (downsample 2) at 64 px
    assert (grid.size0, grid.level, grid.read_size, grid.mpp) == (128, 1, 64, 0.25)
    assert grid.n_grid == 64 and len(grid) == 32
    assert (grid.coords % 128 == 0).all() and grid.coords[:, 0].max() < 512
    assert (grid.tissue >= 0.5).all()
    slide = open_slide(path)
    tile = np.asarray(grid.read(slide, 0))
    assert tile.shape == (64, 64, 3)
    x, y = grid.coords[0]
    expected = np.asarray(read_rgb(slide, (int(x), int(y)), 0, (128, 128)).resize((64, 64), Image.BOX))
    assert np.abs(tile.astype(int) - expected.astype(int)).mean() < 3
    # target 1.0 µm/px with 64 px tiles -> footprint 256, best level 2 (downsample 4)
    g2 = tile_slide(path, target_mpp=1.0, tile_size=64, min_tissue=0.5, slide=slide)
    assert (g2.size0, g2.level, g2.read_size) == (256, 2, 64)


def test_grid_csv_is_cached_and_reused(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "s.tif", synthetic_he_image(512, 512, 4), mpp=0.5)
    coords_dir = tmp_path / "tiles"
    grid = cached_tile_grid(path, coords_dir, target_mpp=1.0, tile_size=32, min_tissue=0.3)
    csv = grid_csv_path(coords_dir, path)
    assert csv.is_file() and csv.read_text().splitlines()[1] == "x,y,tissue"
    stamp = csv.stat().st_mtime_ns
    again = cached_tile_grid(path, coords_dir, target_mpp=1.0, tile_size=32, min_tissue=0.3)
    assert csv.stat().st_mtime_ns == stamp  # reused, not rewritten
    np.testing.assert_array_equal(again.coords, grid.coords)
    loaded = load_grid(csv)
    assert (loaded.size0, loaded.level, loaded.mpp) == (grid.size0, grid.level, 0.5)
    other = cached_tile_grid(path, coords_dir, target_mpp=1.0, tile_size=32, min_tissue=0.9)
    assert len(other) <= len(grid) and load_grid(csv).params["min_tissue"] == 0.9


def test_no_tissue_slide_raises_naming_file(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "empty.tif", synthetic_he_image(512, 512, 0, blank=True), mpp=0.5)
    with pytest.raises(NoTissueError, match=r"empty\.tif: no tissue found"):
        tile_slide(path, target_mpp=0.5, tile_size=64)
    # cached as empty: the second call says the same without tiling again
    for _ in range(2):
        with pytest.raises(NoTissueError, match="empty.tif"):
            cached_tile_grid(path, tmp_path / "tiles", target_mpp=0.5, tile_size=64)


def test_tile_larger_than_slide_is_one_line_error(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "small.tif", synthetic_he_image(300, 400, 0), mpp=0.5)
    assert openslide.OpenSlide(str(path)).dimensions == (400, 300)
    with pytest.raises(DataError) as exc:
        tile_slide(path, target_mpp=0.5, tile_size=512)
    msg = str(exc.value)
    assert "small.tif" in msg and "larger than the slide" in msg and "tile_size=" in msg and "\n" not in msg


def test_real_tcga_tiles_with_mpp_override(shared_file, tmp_path):
    path = shared_file("tcga-cr-7395-01a-01-ts1.svs")
    with pytest.raises(DataError, match="mpp=VALUE"):
        tile_slide(path, target_mpp=0.5, tile_size=224)
    grid = cached_tile_grid(path, tmp_path, target_mpp=1.0, tile_size=224, min_tissue=0.5, mpp=0.25)
    assert grid.size0 == 896 and grid.level == 1 and grid.read_size == 448
    assert 5 <= len(grid) < grid.n_grid
