"""Tile datasets (slides with DataLoader workers, labelled tile folders) and stain tools."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from domainfm.data.sample import check_sample, collate_samples
from domainfm.errors import ConfigError, DataError
from domainfm.pathology.datasets import SlideTileDataset, TileFolderDataset, TileTransform, list_slides
from domainfm.pathology.domain import make_view_augment
from domainfm.pathology.stain import MacenkoNormalizer, hed_jitter, macenko_stains
from domainfm.pathology.synthetic import synthetic_he_image


def _dataset(slide_dir, tmp_path, **kw):
    slides = [r for r in list_slides(slide_dir) if "blank" not in r.path]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SlideTileDataset(
            slides[:3], target_mpp=1.0, tile_size=64, out_size=32, min_tissue=0.4, coords_dir=tmp_path / "tiles", **kw
        )


def test_slide_tile_dataset_samples(slide_dir, tmp_path):
    ds = _dataset(slide_dir, tmp_path, transform=TileTransform(32, mean=(0.5,) * 3, std=(0.25,) * 3))
    assert len(ds) == sum(len(g) for g in ds.grids) and len(ds) > 10
    s = check_sample(ds[3], spatial_dims=2, channels=3)
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    k, j = ds.index[3]
    assert (s["meta"]["x"], s["meta"]["y"]) == tuple(int(v) for v in ds.grids[k].coords[j])
    assert s["meta"]["path"].endswith(".tif") and s["meta"]["size0"] == 128
    raw = ds.read_tile(3)
    expected = (
        torch.from_numpy(np.array(Image.fromarray(raw).resize((32, 32), Image.BILINEAR))).permute(2, 0, 1) / 255 - 0.5
    ) / 0.25
    assert torch.allclose(s["image"], expected.float(), atol=1e-5)
    assert len(ds.cache) == 1 and ds.cache.max_open == 8


def test_dataloader_workers_match_single_process(slide_dir, tmp_path):
    ds = _dataset(slide_dir, tmp_path, transform=TileTransform(32, train=True, stain_sigma=0.05), max_open=2)
    ds[0]  # opens a handle in this process: it must not leak into the workers
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate_samples)
    multi = torch.cat([b["image"] for b in loader])
    single = torch.stack([ds[i]["image"] for i in range(len(ds))])
    assert multi.shape == single.shape
    assert torch.allclose(multi, single, atol=1e-5)  # same tiles, same per-item augmentation
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone.cache) == 0 and torch.allclose(clone[0]["image"], single[0], atol=1e-5)
    ds.set_epoch(1)
    assert not torch.allclose(ds[0]["image"], single[0])  # new epoch, new augmentation


def test_skipped_no_tissue_slides_are_counted(slide_dir, tmp_path):
    slides = list_slides(slide_dir)
    with pytest.warns(UserWarning, match="skipped 1 slide"):
        ds = SlideTileDataset(slides, target_mpp=1.0, tile_size=64, out_size=32, min_tissue=0.4, thumbnail_size=256)
    assert [p.split("/")[-1] for p, _ in ds.skipped] == ["blank.tif"] and len(ds.grids) == 6
    blank = [r for r in slides if "blank" in r.path]
    with pytest.raises(DataError, match="no tissue"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SlideTileDataset(blank, target_mpp=1.0, tile_size=64, thumbnail_size=256)


def test_manifest_csv_with_mpp_column(slide_dir, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide,mpp,label\n{slide_dir / 's0.tif'},0.25,a\ns1.tif,,b\n")
    (tmp_path / "s1.tif").symlink_to(slide_dir / "s1.tif")
    recs = list_slides(manifest, mpp=0.5)
    assert [(r.mpp, r.label) for r in recs] == [(0.25, "a"), (0.5, "b")]
    assert recs[1].path == str(tmp_path / "s1.tif")
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nx.svs\n")
    with pytest.raises(DataError, match=r"bad\.csv: the manifest needs a 'slide'"):
        list_slides(bad)


def test_tile_folder_dataset(tmp_path):
    for cls, tissue in (("no-tissue", False), ("tissue", True)):
        (tmp_path / cls).mkdir()
        for i in range(5):
            rgb = synthetic_he_image(40, 48, seed=i, blank=not tissue, tissue_fraction=1.0)
            Image.fromarray(rgb).convert("RGBA").save(tmp_path / cls / f"{i}.png")
    train = TileFolderDataset(tmp_path, "train", out_size=32, val_fraction=0.4)
    val = TileFolderDataset(tmp_path, "val", out_size=32, val_fraction=0.4)
    assert train.classes == ["no-tissue", "tissue"] and (len(train), len(val)) == (6, 4)
    assert not {f for f, _ in train.files} & {f for f, _ in val.files}
    batch = collate_samples([train[i] for i in range(len(train))])
    assert batch["image"].shape == (6, 3, 32, 32) and sorted(batch["label"].tolist()) == [0, 0, 0, 1, 1, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no tile images"):
        TileFolderDataset(tmp_path / "empty", "all")


def test_hed_jitter_is_seeded_and_bounded():
    x = torch.from_numpy(synthetic_he_image(32, 32, 1, tissue_fraction=1.0)).permute(2, 0, 1).float() / 255
    a = hed_jitter(x, torch.Generator().manual_seed(0), sigma=0.1)
    b = hed_jitter(x, torch.Generator().manual_seed(0), sigma=0.1)
    c = hed_jitter(x, torch.Generator().manual_seed(1), sigma=0.1)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.min() >= 0 and a.max() <= 1 and 0.001 < (a - x).abs().mean() < 0.2
    assert torch.allclose(hed_jitter(x, torch.Generator(), sigma=0.0), x)
    aug = make_view_augment(torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25), 0.1)
    v1, v2 = aug(x, torch.Generator().manual_seed(3)), aug(x, torch.Generator().manual_seed(3))
    assert v1.shape == x.shape and torch.equal(v1, v2)


def test_macenko_normalization_reduces_stain_difference():
    # the same tissue rendered with two different stain matrices (Beer-Lambert)
    rgb = synthetic_he_image(96, 96, seed=2, tissue_fraction=1.0, nuclei_per_mpx=30000)
    other = np.array([[0.65, 0.15], [0.70, 0.85], [0.30, 0.50]])
    shifted = synthetic_he_image(
        96, 96, seed=2, tissue_fraction=1.0, nuclei_per_mpx=30000, stains=other / np.linalg.norm(other, axis=0)
    )
    norm = MacenkoNormalizer()
    a, b = norm.normalize(rgb), norm.normalize(shifted)
    assert a.shape == rgb.shape and a.dtype == np.uint8
    before = np.abs(rgb.astype(float) - shifted).mean()
    after = np.abs(a.astype(float) - b).mean()
    assert after < 0.4 * before
    he, _ = macenko_stains(rgb)
    assert np.abs(he[:, 1] - np.array([0.2159, 0.8012, 0.5581])).max() < 0.05  # eosin vector recovered
    blank = np.full((16, 16, 3), 250, np.uint8)
    assert macenko_stains(blank) is None
    np.testing.assert_array_equal(norm.normalize(blank), blank)  # nothing to normalize: unchanged
    again = MacenkoNormalizer.from_dict(MacenkoNormalizer().fit(shifted).to_dict())
    np.testing.assert_allclose(again.stain_matrix, macenko_stains(shifted)[0])


def test_macenko_option_and_card_preprocessor_match_the_dataset(slide_dir, tmp_path):
    from domainfm.registry import get_domain
    from domainfm.runconfig import load_config

    domain = get_domain("pathology")
    cfg = load_config(
        {
            "domain": "pathology",
            "out": str(tmp_path),
            "data": {
                "path": str(slide_dir / "s1.tif"),
                "img_size": 32,
                "options": {
                    "target_mpp": 1.0,
                    "tile_size": 64,
                    "min_tissue": 0.4,
                    "macenko": True,
                    "mean": "0.5,0.5,0.5",
                },
            },
        }
    )
    ds = domain.dataset(cfg, "pretrain")
    assert ds.transform.macenko is not None and ds.transform.train
    card = {"preprocessing": domain.preprocessing(cfg, ds)}
    assert card["preprocessing"]["macenko"]["stain_matrix"] and card["preprocessing"]["mean"] == [0.5] * 3
    pre = domain.preprocessor(card)
    rgb = ds.read_tile(0)
    x = pre(rgb)
    assert x.shape == (3, 32, 32) and torch.isfinite(x).all()
    eval_ds = SlideTileDataset(
        [slide_dir / "s1.tif"],
        target_mpp=1.0,
        tile_size=64,
        out_size=32,
        min_tissue=0.4,
        transform=TileTransform(32, mean=(0.5,) * 3, std=cfg.options.std, macenko=MacenkoNormalizer()),
    )
    # without a per-slide stain estimate the preprocessor equals the dataset transform on the same tile
    assert torch.allclose(eval_ds.transform(eval_ds.read_tile(0)), pre(eval_ds.read_tile(0)), atol=1e-5)
    bad = load_config({"domain": "pathology", "data": {"path": str(slide_dir), "options": {"mean": "0.5,0.5"}}})
    with pytest.raises(ConfigError, match="mean must be three numbers"):
        domain.transform(bad, train=False)
