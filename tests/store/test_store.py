"""Prepare once into a chunked zarr store, then stream crops (issue 22): the three domains, resume after
a crash, a second run that does nothing, crops that read only their chunks, sharding, and pretraining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import domainfm
import domainfm.store.build as store_prepare
import domainfm.store.dataset as store_dataset
from domainfm.store import StoreError, is_store, open_store, prepare, read_manifest, shard_indices
from tests.conftest import tiny_config
from tests.robustness.conftest import digest, run_cli

zarr = pytest.importorskip("zarr")

ROOT = Path(__file__).resolve().parents[2]
CT = {"modality": "ct"}


def _ct_folder(folder: Path, n: int = 3, shape=(40, 40, 20)) -> Path:
    from domainfm.medical.synthetic import write_ct_nifti_folder

    return write_ct_nifti_folder(folder, n=n, shape=shape)[0].parent


def test_medical_prepare_records_provenance_and_second_run_does_nothing(tmp_path, capsys):
    src = _ct_folder(tmp_path / "ct")
    before = digest(src)
    report = prepare("medical", src, tmp_path / "store", workers=1, options=CT)
    assert report.prepared == ["ct_0", "ct_1", "ct_2"] and not report.failed
    store = tmp_path / "store"
    assert is_store(store) and not is_store(src)
    manifest = read_manifest(store, "medical")
    assert manifest["software"]["domainfm"] == domainfm.__version__
    assert manifest["settings"]["options"]["modality"] == "ct" and manifest["complete"]
    item = manifest["items"][0]
    assert item["stamps"][0]["size"] == (src / "ct_0.nii.gz").stat().st_size
    assert item["spacing"] == [1.5, 1.5, 2.0] and len(item["affine"]) == 4
    arr = zarr.open_group(str(store / "items" / "ct_0"), mode="r")["image"]
    assert arr.dtype == np.int16 and arr.chunks == (1, 32, 32, 20)
    stored = digest(store)
    capsys.readouterr()
    again = prepare("medical", src, store, workers=1, options=CT)
    assert again.nothing_to_do and "nothing to do" in capsys.readouterr().out
    assert digest(store) == stored and digest(src) == before


def test_medical_store_crops_match_the_domain_preprocessing(tmp_path):
    from domainfm.medical.options import MedicalOptions
    from domainfm.medical.transforms import build_transforms

    src = _ct_folder(tmp_path / "ct", n=1)
    prepare("medical", src, tmp_path / "store", workers=1, options=CT, progress=False)
    ds = open_store(tmp_path / "store", crop=[40, 40, 20])
    det, _ = build_transforms(MedicalOptions(modality="ct"), [1, 1, 1], "pretrain")
    want = det({"image": str(src / "ct_0.nii.gz")})["image"]
    got = ds[0]
    scale = read_manifest(tmp_path / "store")["items"][0]["quantization"]["scale"]
    assert got["image"].dtype == torch.float32 and got["image"].shape == (1, 40, 40, 20)
    assert float((got["image"] - want).abs().max()) <= scale
    small = open_store(tmp_path / "store", crop=16)[0]
    assert small["image"].shape == (1, 16, 16, 16)
    assert small["meta"]["path"].endswith("ct_0.nii.gz") and small["meta"]["key"] == "ct_0"


def test_crash_mid_prepare_then_rerun_finishes_without_redoing(tmp_path, monkeypatch):
    src = _ct_folder(tmp_path / "ct", n=5, shape=(16, 16, 8))
    store = tmp_path / "store"
    commit = store_prepare._commit
    calls = {"n": 0}

    def crash_on_third(out, result):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return commit(out, result)

    monkeypatch.setattr(store_prepare, "_commit", crash_on_third)
    with pytest.raises(RuntimeError):
        prepare("medical", src, store, workers=1, options=CT, progress=False)
    done = sorted(p.name for p in (store / "items").iterdir())
    assert done == ["ct_0", "ct_1"]  # no half entry in items/
    assert len(read_manifest(store)["items"]) == 0  # the store stays readable (the journal holds the two)
    stamps = {k: (store / "items" / k / "zarr.json").stat().st_mtime_ns for k in done}
    monkeypatch.setattr(store_prepare, "_commit", commit)
    ran = []
    one = store_prepare._prepare_one
    monkeypatch.setattr(store_prepare, "_prepare_one", lambda d, st, s, *a: ran.append(s.key) or one(d, st, s, *a))
    report = prepare("medical", src, store, workers=1, options=CT, progress=False)
    assert sorted(ran) == ["ct_2", "ct_3", "ct_4"] and report.kept == 2
    assert {k: (store / "items" / k / "zarr.json").stat().st_mtime_ns for k in done} == stamps
    assert len(read_manifest(store)["items"]) == 5 and not (store / "tmp").exists()


def test_prepare_in_two_processes(tmp_path):
    src = _ct_folder(tmp_path / "ct", n=3, shape=(16, 16, 8))
    report = prepare("medical", src, tmp_path / "store", workers=2, options=CT, progress=False)
    assert sorted(report.prepared) == ["ct_0", "ct_1", "ct_2"]
    assert len(open_store(tmp_path / "store", crop=8)) == 3


def test_a_crop_reads_only_the_chunks_it_covers(tmp_path, monkeypatch):
    import domainfm.store.chunks as store_chunks

    src = _ct_folder(tmp_path / "ct", n=1, shape=(96, 96, 64))  # 3 x 3 x 2 chunks of 32^3
    prepare("medical", src, tmp_path / "store", workers=1, options=CT, progress=False)
    reads, opened = [], []
    read = store_chunks.read_chunk_file
    monkeypatch.setattr(store_chunks, "read_chunk_file", lambda path: reads.append(path) or read(path))
    open_group = store_dataset.open_item_group
    monkeypatch.setattr(store_dataset, "open_item_group", lambda f, c: opened.append(f) or open_group(f, c))
    ds = open_store(tmp_path / "store", crop=16, cache_mb=0)
    for epoch in range(4):
        ds.set_epoch(epoch)
        before = len(reads)
        assert ds[0]["image"].shape == (1, 16, 16, 16)
        assert 1 <= len(reads) - before <= 8  # a 16^3 crop touches at most 2 x 2 x 2 of the 18 chunks
    assert len(opened) == 1  # the item stays open (LRU), it is not reopened per crop
    cached = open_store(tmp_path / "store", crop=16)
    first = len(reads)
    a = cached[0]["image"]
    assert 1 <= len(reads) - first <= 8
    again = len(reads)
    torch.testing.assert_close(cached[0]["image"], a)  # the same crop again: its chunks come from the cache
    assert len(reads) == again


def test_shards_cover_an_epoch_once_across_ranks_and_workers():
    seen = []
    for rank in range(2):
        for worker in range(3):
            seen += shard_indices(23, epoch=1, seed=5, rank=rank, world_size=2, worker=worker, num_workers=3)
    assert len(seen) == len(set(seen)) == 22  # 11 per rank, the odd one left out so ranks stay in step
    assert shard_indices(23, 1, 5) != shard_indices(23, 2, 5)


def test_stream_shards_over_dataloader_workers(tmp_path):
    src = _ct_folder(tmp_path / "ct", n=4, shape=(16, 16, 8))
    prepare("medical", src, tmp_path / "store", workers=1, options=CT, progress=False)
    stream = open_store(tmp_path / "store", crop=8).stream()
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    keys = sorted(s["meta"]["key"] for s in loader)
    assert keys == ["ct_0", "ct_1", "ct_2", "ct_3"]


def test_pathology_tiles_at_the_target_mpp(tmp_path):
    from domainfm.pathology.synthetic import write_synthetic_slide
    from domainfm.pathology.tiling import tile_slide

    slide = write_synthetic_slide(tmp_path / "slides" / "s1.tif", (256, 256), mpp=0.5)
    opts = {"target_mpp": 1.0, "tile_size": 32, "min_tissue": 0.3}
    report = prepare("pathology", slide.parent, tmp_path / "store", workers=1, options=opts, img_size=32)
    assert report.prepared == ["s1.tif"]
    grid = tile_slide(slide, 1.0, 32, 0.3)
    record = read_manifest(tmp_path / "store", "pathology")["items"][0]
    assert record["tiles"] == len(grid) and record["size0"] == 64 and record["slide_id"] == "s1"
    ds = open_store(tmp_path / "store")
    s = ds[1]
    assert len(ds) == len(grid) and s["image"].shape == (3, 32, 32)
    assert [s["meta"]["x"], s["meta"]["y"]] == grid.coords[1].tolist()
    assert open_store(tmp_path / "store", crop=16)[0]["image"].shape == (3, 16, 16)


def test_remote_sensing_scenes_keep_crs_transform_bands_and_stats(tmp_path):
    import rasterio

    from domainfm.remote_sensing.synthetic import write_scene

    for k in range(2):
        write_scene(tmp_path / "scenes" / f"scene{k}.tif", "sentinel2", ["B02", "B03", "B04"], size=(48, 40), seed=k)
    options = {"sensor": "sentinel2", "bands": "B02,B03,B04", "chips_per_scene": 3}
    prepare("remote_sensing", tmp_path / "scenes", tmp_path / "store", workers=1, options=options, img_size=32)
    manifest = read_manifest(tmp_path / "store", "remote_sensing")
    rec = manifest["items"][0]
    with rasterio.open(tmp_path / "scenes" / "scene0.tif") as src:
        assert rec["crs"] == src.crs.to_wkt() and rec["transform"] == list(src.transform)[:6]
        assert (rec["height"], rec["width"]) == (src.height, src.width)
    assert rec["bands"] == ["B02", "B03", "B04"]
    assert set(manifest["summary"]["stats"][rec["sensor"]]) == {"B02", "B03", "B04"}
    ds = open_store(tmp_path / "store")
    s = ds[4]
    assert len(ds) == 6 and s["image"].shape == (3, 32, 32) and len(s["wavelengths"]) == 3
    assert s["meta"]["path"].endswith("scene1.tif") and s["meta"]["crs"] == manifest["items"][1]["crs"]


def test_pretrain_reads_a_medical_store(tmp_path):
    src = _ct_folder(tmp_path / "ct", n=3, shape=(24, 24, 16))
    prepare("medical", src, tmp_path / "store", workers=1, options=CT, progress=False)
    cfg = tiny_config(tmp_path / "run", data={"img_size": 16}, train={"steps": 2, "batch_size": 2})
    cfg["data"].pop("options")
    cfg.pop("objective")
    ckpt = domainfm.pretrain(cfg, data=open_store(tmp_path / "store", crop=16))
    assert (ckpt / "card.json").is_file()


def test_refuses_other_preprocessing_on_an_existing_store(tmp_path):
    src = _ct_folder(tmp_path / "ct", n=1, shape=(16, 16, 8))
    prepare("medical", src, tmp_path / "store", workers=1, options=CT, progress=False)
    with pytest.raises(StoreError, match="other preprocessing"):
        prepare("medical", src, tmp_path / "store", workers=1, options={"modality": "ct", "window": "lung"})


def test_the_cli_prepares_with_the_codec_asked_for(tmp_path, capsys):
    """``domainfm prepare --compression zstd`` writes zstd chunks and the manifest says so; the crops read back."""
    src = _ct_folder(tmp_path / "ct", n=1, shape=(16, 16, 8))
    code, err = run_cli(
        ["prepare", "--domain", "medical", "--data", src, "--out", tmp_path / "store", "--workers", "1"]
        + ["--compression", "zstd", "--modality", "ct"],
        capsys,
    )
    assert code == 0, err
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["compression"]["name"] == "zstd"
    assert open_store(tmp_path / "store", crop=8)[0]["image"].shape == (1, 8, 8, 8)
