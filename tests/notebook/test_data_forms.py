"""Data in the forms a notebook holds it: arrays, tensors, PyTorch / MONAI / TorchGeo datasets, through
pretrain, finetune and embed; metadata taken from the object, statistics computed, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import domainfm
from domainfm.data.adapters import adapt
from domainfm.errors import ConfigError, DataError

TINY = {
    "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
    "objective": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "progress": False, "tensorboard": False},
}


def _cfg(out, **extra):
    return {"out": str(out), **TINY, **extra}


def _images(n=8, c=3, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, size, size)).astype(np.uint8)


def test_uint8_array_pretrains_and_the_card_records_stats_and_range(tmp_path):
    x = _images()
    ckpt = domainfm.pretrain(_cfg(tmp_path / "run"), data=x)
    model = domainfm.load(ckpt)
    pre = model.card["preprocessing"]
    assert model.card["domain"] == "arrays" and pre["channels"] == 3 and pre["size"] == [16, 16]
    assert pre["range"][1] > 200 and np.allclose(pre["mean"], x.reshape(8, 3, -1).mean((0, 2)), atol=1e-3)
    assert "array" in model.card["data"]["source"]
    # raw numpy goes through the card's normalisation: same vector as the normalised tensor
    z_np = model.embed(x[:2])
    mean, std = torch.tensor(pre["mean"])[:, None, None], torch.tensor(pre["std"])[:, None, None]
    norm = (torch.from_numpy(x[:2]).float() - mean) / std
    assert torch.allclose(z_np, model.embed(norm), atol=1e-5)
    # [0, 1] input for a model trained on 0..255 is converted with a warning, never silently
    with pytest.warns(UserWarning, match="multiplying by 255"):
        z01 = model.embed(x[:2] / 255.0)
    assert torch.allclose(z01, z_np, atol=1e-4)
    with pytest.raises(DataError, match="expected one image of 3 x 16 x 16"):
        model.embed(np.zeros((2, 5, 16, 16)))


def test_tensor_dataset_tuples_finetune_and_embed_frame(tmp_path):
    x = torch.rand(12, 2, 16, 16)
    y = torch.tensor([0, 1] * 6)
    ckpt = domainfm.pretrain(_cfg(tmp_path / "pre"), data=TensorDataset(x, y))
    with pytest.raises(ConfigError, match='exist_ok="resume"'):
        domainfm.pretrain(_cfg(tmp_path / "pre"), data=x)
    ft = domainfm.finetune(
        ckpt, task="classification", data=x, labels=y, out=tmp_path / "ft", val_data=x[:4], val_labels=y[:4]
    )
    model = domainfm.load(ft)
    assert model.card["num_classes"] == 2 and model.card["preprocessing"] == domainfm.load(ckpt).card["preprocessing"]
    df = domainfm.embed(ckpt, TensorDataset(x, y))
    pd = pytest.importorskip("pandas")
    assert isinstance(df, pd.DataFrame) and len(df) == 12 and list(df["label"][:2]) == [0, 1]
    assert df.filter(regex=r"^z\d+$").shape == (12, 32)


class DictSet(Dataset):
    classes = ["a", "b"]

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {"image": torch.full((1, 16, 16), float(i) / 6), "label": i % 2, "id": f"s{i}"}


def test_dict_dataset_and_monai_dataset(tmp_path):
    ds = adapt(DictSet())
    assert ds.classes == ["a", "b"] and ds[1]["label"] == 1 and ds[1]["meta"]["id"] == "s1"
    monai_data = pytest.importorskip("monai.data")
    items = [
        {
            "image": monai_data.MetaTensor(torch.rand(1, 16, 16), meta={"pixdim": torch.tensor([1, 0.5, 0.5, 1])}),
            "label": i % 2,
        }
        for i in range(4)
    ]
    ads = adapt(monai_data.Dataset(items))
    assert ads.profile["spacing"][:2] == [0.5, 0.5] and ads[0]["image"].shape == (1, 16, 16)
    ckpt = domainfm.pretrain(_cfg(tmp_path / "m"), data=monai_data.Dataset(items))
    assert domainfm.load(ckpt).card["preprocessing"]["spacing"][:2] == [0.5, 0.5]


def test_torchgeo_raster_dataset_with_sampler_and_nongeo(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    tgd = pytest.importorskip("torchgeo.datasets")
    samplers = pytest.importorskip("torchgeo.samplers")
    from rasterio.transform import from_origin

    folder = tmp_path / "tifs"
    folder.mkdir()
    data = np.random.default_rng(0).integers(0, 3000, (4, 64, 64)).astype(np.uint16)
    with rasterio.open(
        folder / "scene.tif",
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=4,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(500000, 4600000, 10, 10),
    ) as dst:
        dst.write(data)
    raster = tgd.RasterDataset(paths=str(folder))
    sampler = samplers.RandomGeoSampler(raster, size=16, length=6, generator=torch.Generator().manual_seed(0))
    ckpt = domainfm.pretrain(_cfg(tmp_path / "geo"), data=raster, sampler=sampler)
    pre = domainfm.load(ckpt).card["preprocessing"]
    assert "32633" in pre["crs"] and pre["res"] == [10.0, 10.0] and pre["channels"] == 4
    with pytest.raises(DataError, match="pass sampler="):
        adapt(raster)

    class Bands(tgd.NonGeoDataset):
        bands = ("B02", "B03", "B04")
        classes = ["forest", "river"]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": torch.rand(3, 16, 16), "label": torch.tensor(i % 2)}

    ads = adapt(Bands())
    assert ads.profile["band_names"] == ["B02", "B03", "B04"] and ads.classes == ["forest", "river"]


def test_unreadable_objects_state_the_schema():
    with pytest.raises(DataError, match="'image': C x"):
        adapt([{"pixels": np.zeros((4, 4))}])
    with pytest.raises(DataError, match="labels for"):
        adapt(np.zeros((4, 1, 8, 8)), labels=[0, 1])
    with pytest.warns(UserWarning, match="channels last"):
        assert adapt(np.zeros((2, 32, 32, 3), np.float32)).profile["channels"] == 3


def test_resume_on_an_empty_folder_starts_fresh_and_overwrite_restarts(tmp_path):
    x = torch.rand(8, 1, 16, 16)
    ckpt = domainfm.pretrain(_cfg(tmp_path / "r"), data=x, resume=True)
    assert ckpt.name.endswith("2")
    again = domainfm.pretrain(_cfg(tmp_path / "r"), data=x, exist_ok="overwrite")
    assert again == ckpt and len(list((tmp_path / "r").glob("ckpt-*"))) == 1
    with pytest.raises(ConfigError, match="exist_ok must be"):
        domainfm.pretrain(_cfg(tmp_path / "r"), data=x, exist_ok="yes")


def test_wavelengths_given_with_the_data_make_a_channel_adaptive_encoder(tmp_path):
    x = np.random.default_rng(1).uniform(0, 1, (8, 4, 16, 16)).astype(np.float32)
    ds = adapt(x, wavelengths=[0.49, 0.56, 0.665, 0.842])
    ckpt = domainfm.pretrain(_cfg(tmp_path / "wl"), data=ds)
    model = domainfm.load(ckpt)
    assert model.card["encoder"]["patch_embed"] == "wavelength"
    assert model.card["preprocessing"]["wavelengths"] == [0.49, 0.56, 0.665, 0.842]
    assert model.embed(x[:2]).shape == (2, 32)
