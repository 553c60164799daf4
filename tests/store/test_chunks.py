"""The store's own read path (:mod:`domainfm.store.chunks`): the same values as zarr for every indexing form
the domains use, chunks never written read as the fill value, other layouts read through zarr, and the
decoded-chunk cache bounded in bytes."""

from __future__ import annotations

import numpy as np
import pytest

from domainfm.errors import ConfigError
from domainfm.store import open_store, prepare, read_manifest
from domainfm.store.chunks import ChunkCache, StoredArray, StoredGroup
from domainfm.store.layout import ItemWriter

zarr = pytest.importorskip("zarr")

SELECTIONS = [
    (slice(None),),
    (0,),
    (-1, slice(3, 40), slice(30, 99)),
    (Ellipsis, slice(5, 6)),
    (1, Ellipsis),
    (slice(0, 2), slice(31, 33), slice(0, 1)),
    (slice(2, 2),),
    (0, 36, 40),
    (slice(None), slice(-5, None), slice(None, -7)),
]


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
@pytest.mark.parametrize("dtype", ["int16", "uint8", "float32", "int64"])
def test_reads_the_same_values_as_zarr(tmp_path, dtype, compression):
    writer = ItemWriter(tmp_path / "item", compression)
    values = np.random.default_rng(0).integers(0, 100, (2, 37, 41)).astype(dtype)
    values[:, :32, :32] = 0  # a chunk of fill values: zarr does not write it
    writer.array("a", values.shape, dtype, (1, 16, 32))[...] = values
    assert not (tmp_path / "item" / "a" / "c" / "0" / "0" / "0").exists()
    ours = StoredGroup(tmp_path / "item", ChunkCache(1 << 20))["a"]
    theirs = zarr.open_array(str(tmp_path / "item" / "a"), mode="r")
    assert isinstance(ours, StoredArray) and ours.shape == values.shape and ours.dtype == np.dtype(dtype)
    for sel in SELECTIONS:
        got = ours[sel]
        np.testing.assert_array_equal(got, values[sel])
        np.testing.assert_array_equal(got, theirs[sel])
    np.testing.assert_array_equal(ours[:, ::2, 1], values[:, ::2, 1])  # a step: read through zarr
    with pytest.raises(IndexError):
        ours[2]


def test_other_layouts_are_read_through_zarr(tmp_path):
    group = zarr.open_group(str(tmp_path / "item"), mode="w")
    values = np.arange(64 * 64, dtype=np.int32).reshape(64, 64)
    group.create_array("sharded", shape=(64, 64), dtype="int32", chunks=(8, 8), shards=(32, 32))[...] = values
    group.create_array("zstd", shape=(64, 64), dtype="int32", chunks=(16, 16), compressors=zarr.codecs.ZstdCodec())[
        ...
    ] = values
    items = StoredGroup(tmp_path / "item", ChunkCache(0))
    assert not isinstance(items["sharded"], StoredArray) and isinstance(items["zstd"], StoredArray)
    for name in ("sharded", "zstd"):
        np.testing.assert_array_equal(items[name][3:40, 60:], values[3:40, 60:])
    assert "zstd" in items and "other" not in items
    with pytest.raises(KeyError):
        items["other"]


def test_the_chunk_cache_stays_within_its_bytes(tmp_path):
    from domainfm.medical.synthetic import write_ct_nifti_folder

    src = write_ct_nifti_folder(tmp_path / "ct", n=4, shape=(40, 40, 24))[0].parent
    prepare("medical", src, tmp_path / "store", workers=1, options={"modality": "ct"}, progress=False)
    limit_mb = 0.2  # three 32^3 int16 chunks
    ds = open_store(tmp_path / "store", crop=16, cache_mb=limit_mb)
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            ds[i]
            assert 0 < ds._cache.nbytes <= limit_mb * 2**20
    cache = ChunkCache(100)
    cache.put("big", np.zeros(101, np.uint8))  # larger than the whole cache: not kept
    assert cache.get("big") is None and cache.nbytes == 0


def test_compression_is_chosen_and_recorded(tmp_path):
    from domainfm.medical.synthetic import write_ct_nifti_folder

    src = write_ct_nifti_folder(tmp_path / "ct", n=1, shape=(16, 16, 8))[0].parent
    prepare("medical", src, tmp_path / "z", workers=1, options={"modality": "ct"}, progress=False, compression="zstd")
    assert read_manifest(tmp_path / "z")["compression"]["name"] == "zstd"
    meta = zarr.open_array(str(tmp_path / "z" / "items" / "ct_0" / "image"), mode="r").metadata
    assert meta.codecs[-1].cname.value == "zstd"
    assert open_store(tmp_path / "z", crop=8)[0]["image"].shape == (1, 8, 8, 8)
    with pytest.raises(ConfigError, match="compression: unknown 'snappy'; choose one of lz4, zstd"):
        prepare("medical", src, tmp_path / "s", workers=1, options={"modality": "ct"}, compression="snappy")
    assert not (tmp_path / "s").exists()
