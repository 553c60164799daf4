"""Reading slides: OpenSlide on real tiled pyramids, the plain-TIFF fallback, MPP, bad files."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile

from domainfm.errors import DataError, DomainFMError
from domainfm.pathology.slide import SlideCache, mpp_from_properties, open_slide, slide_mpp
from domainfm.pathology.synthetic import synthetic_he_image, write_pyramidal_tiff


def test_written_pyramid_opens_in_openslide_with_mpp(tmp_path):
    rgb = synthetic_he_image(1024, 768, seed=3)
    path = write_pyramidal_tiff(tmp_path / "p.tif", rgb, mpp=0.25, levels=3)
    slide = openslide.OpenSlide(str(path))
    assert slide.properties["openslide.vendor"] == "generic-tiff"
    assert slide.level_dimensions == ((768, 1024), (384, 512), (192, 256))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    region = np.asarray(slide.read_region((256, 512), 0, (64, 64)).convert("RGB"))
    np.testing.assert_array_equal(region, rgb[512:576, 256:320])
    assert slide_mpp(slide, path) == pytest.approx(0.25)
    assert slide.get_best_level_for_downsample(2.0) == 1


def test_mpp_from_vendor_keys_and_resolution_tags():
    assert mpp_from_properties({"openslide.mpp-x": "0.2527"}) == pytest.approx(0.2527)
    assert mpp_from_properties({"aperio.MPP": "0.499"}) == pytest.approx(0.499)
    assert mpp_from_properties({"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"}) == pytest.approx(
        0.25
    )
    assert mpp_from_properties({"tiff.XResolution": "101600", "tiff.ResolutionUnit": "inch"}) == pytest.approx(0.25)
    # 72 dpi screen defaults are not a scan resolution
    assert mpp_from_properties({"tiff.XResolution": "72", "tiff.ResolutionUnit": "inch"}) is None
    assert mpp_from_properties({}) is None


def test_slide_without_mpp_is_none_unless_required(tmp_path):
    from domainfm.cli import cli_words

    path = write_pyramidal_tiff(tmp_path / "nompp.tif", synthetic_he_image(512, 512, 1), mpp=None)
    slide = open_slide(path)
    assert slide_mpp(slide, path) is None
    with pytest.raises(DataError) as exc:
        slide_mpp(slide, path, require=True)
    msg = str(exc.value)
    assert "nompp.tif" in msg and "mpp=VALUE" in msg and "manifest" in msg and "\n" not in msg
    assert "--" not in msg  # Python words; the CLI says the same in flags
    assert "--mpp VALUE" in cli_words(msg)
    assert slide_mpp(slide, path, override=0.5) == 0.5


def test_real_tcga_slide_has_no_mpp(shared_file):
    path = shared_file("tcga-cr-7395-01a-01-ts1.svs")
    slide = open_slide(path)
    assert slide.level_count == 2 and slide.dimensions == (4443, 3567)
    assert slide_mpp(slide, path) is None
    with pytest.raises(DataError, match=r"tcga-cr-7395-01a-01-ts1\.svs: no microns-per-pixel.*mpp=VALUE"):
        slide_mpp(slide, path, require=True)
    assert slide_mpp(slide, path, override=0.25) == 0.25


def test_broken_slide_is_one_line_error(tmp_path, shared_file):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    with pytest.raises(DomainFMError) as exc:
        open_slide(bad)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)
    real = shared_file("broken.svs")
    with pytest.raises(DataError, match=r"broken\.svs: unreadable slide"):
        open_slide(real)
    with pytest.raises(DataError, match="does not exist"):
        open_slide(tmp_path / "missing.svs")


def test_plain_tiff_falls_back_with_warning(tmp_path):
    rgb = synthetic_he_image(300, 400, seed=2)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    with pytest.raises(openslide.OpenSlideUnsupportedFormatError):
        openslide.OpenSlide(str(path))
    with pytest.warns(UserWarning, match="non-pyramidal"):
        slide = open_slide(path)
    assert slide.dimensions == (400, 300)
    assert slide_mpp(slide, path) == pytest.approx(0.5)  # from the TIFF tags via tifffile
    np.testing.assert_array_equal(np.asarray(slide.read_region((10, 20), 0, (8, 8)).convert("RGB")), rgb[20:28, 10:18])
    with pytest.raises(DataError):
        open_slide(path, allow_fallback=False)


def test_real_plain_kidney_tiff_fallback(shared_file):
    path = shared_file("kidney-48-5.tif")
    with pytest.warns(UserWarning, match="OpenSlide does not recognise"):
        slide = open_slide(path)
    assert slide.dimensions == (1493, 901)


def test_slide_cache_is_lru_and_not_pickled(tmp_path):
    import pickle

    paths = [write_pyramidal_tiff(tmp_path / f"c{i}.tif", synthetic_he_image(256, 256, i), mpp=0.5) for i in range(3)]
    cache = SlideCache(max_open=2)
    a = cache.get(paths[0])
    assert cache.get(paths[0]) is a
    cache.get(paths[1]), cache.get(paths[2])
    assert len(cache) == 2 and str(paths[0]) not in cache._handles
    clone = pickle.loads(pickle.dumps(cache))
    assert len(clone) == 0 and clone.max_open == 2
