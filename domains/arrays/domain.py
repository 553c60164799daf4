"""The ``arrays`` domain: data held in memory (arrays, tensors, PyTorch/MONAI/TorchGeo datasets) or saved
as ``.npy``/``.npz``, described by what the object carries (see :mod:`domainfm.data.adapters`).

``pretrain(config, data=x)`` trains under this domain when ``data`` is an object. The card records the
channels, size, value range and per-channel mean/std (computed from the data), plus band names,
wavelengths, CRS, resolution, spacing or MPP when the object carries them; ``load`` rebuilds the same
normalisation, and refuses (or converts with a warning) input on another scale.

Example:
    >>> import numpy as np
    >>> from domainfm.data.adapters import adapt
    >>> d = ArraysDomain()
    >>> ds = adapt(np.random.default_rng(0).uniform(0, 1, (4, 2, 16, 16)))
    >>> pre = d.preprocessor({"preprocessing": d.profile_record(ds)})
    >>> pre(np.full((2, 16, 16), 0.5)).shape
    torch.Size([2, 16, 16])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from domainfm.data.adapters import AdaptedDataset, adapt, check_scale
from domainfm.domain import Domain, DomainExample, accept_options
from domainfm.errors import ConfigError, DataError
from domainfm.inference import write_embeddings
from domainfm.io_safety import check_output
from domainfm.runconfig import config_from_card

_PROFILE_KEYS = (
    "source",
    "decisions",
    "spatial_dims",
    "channels",
    "size",
    "range",
    "mean",
    "std",
    "band_names",
    "wavelengths",
    "crs",
    "res",
    "spacing",
    "mpp",
    "dtype",
)


def read_array_file(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (and labels) from ``.npy`` (images only) or ``.npz`` (``images``/``x`` and ``labels``/``y``)."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read as .npy/.npz ({exc})") from None
    if isinstance(loaded, np.ndarray):
        return loaded, None
    keys = set(loaded.files)
    x = next((k for k in ("images", "image", "x") if k in keys), None)
    if x is None:
        raise DataError(path, f"has arrays {sorted(keys)}; name the images 'images' (and the labels 'labels')")
    y = next((k for k in ("labels", "label", "y", "masks") if k in keys), None)
    return loaded[x], (loaded[y] if y else None)


class ArraysDomain(Domain):
    """Images from memory or ``.npy``/``.npz``, normalised with statistics computed from the data."""

    name = "arrays"
    needs_data_path = False

    @dataclass
    class Options:
        normalize: bool = True
        spatial_dims: int | None = None
        channels_last: bool | None = None

    def dataset(self, cfg, split: str) -> AdaptedDataset:
        if cfg.data.path is None:
            raise ConfigError(
                "the arrays domain reads data you give: pretrain(config, data=array_or_dataset), "
                "or data.path set to a .npy/.npz file"
            )
        opt = self.options(cfg)
        x, y = read_array_file(cfg.data.path)
        if split in ("train", "val", "test") and y is not None:
            order = np.random.default_rng(cfg.train.seed).permutation(len(x))
            n_val = max(1, int(round(len(x) * cfg.data.val_fraction)))
            keep = order[n_val:] if split == "train" else order[:n_val]
            x, y = x[np.sort(keep)], y[np.sort(keep)]
        ds = adapt(x, y, spatial_dims=opt.spatial_dims, channels_last=opt.channels_last)
        return self.prepare(ds, cfg)

    def prepare(self, ds: AdaptedDataset, cfg, card: dict | None = None) -> AdaptedDataset:
        """Normalise ``ds`` with a card's statistics (fine-tuning, embedding) or its own (pretraining)."""
        rec = (card or {}).get("preprocessing") or self.profile_record(ds, self.options(cfg).normalize)
        if rec.get("normalize", True):
            ds.normalise(rec["mean"], rec["std"])
        return ds

    def profile_record(self, ds: AdaptedDataset, normalize: bool = True) -> dict:
        rec = {"kind": "arrays", "normalize": bool(normalize)}
        rec.update({k: ds.profile[k] for k in _PROFILE_KEYS if k in ds.profile})
        return rec

    def encoder_kwargs(self, cfg, dataset=None) -> dict:
        prof = (dataset if dataset is not None else self.dataset(cfg, "pretrain")).profile
        kind = cfg.model.patch_embed or (
            "wavelength" if prof.get("wavelengths") else ("3d" if prof["spatial_dims"] == 3 else "2d")
        )
        size = prof["size"]
        return {
            "patch_embed": kind,
            "img_size": size[0] if len(set(size)) == 1 else list(size),
            "patch_size": cfg.model.patch_size,
            "in_chans": None if kind == "wavelength" else prof["channels"],
        }

    def spatial_dims(self, cfg) -> int:
        return 2 if cfg is None else int(self.options(cfg).spatial_dims or 2)

    def preprocessing(self, cfg, dataset=None) -> dict:
        ds = dataset if dataset is not None else self.dataset(cfg, "pretrain")
        return self.profile_record(ds, self.options(cfg).normalize)

    def export_input(self, card: dict) -> dict:
        """An exported model takes the arrays as given in training (same value range); the card's per-channel
        mean/std are applied inside the graph."""
        rec = card["preprocessing"]
        channels = int(rec["channels"])
        norm = bool(rec.get("normalize", True))
        names = list(rec.get("band_names") or []) or [f"channel{i}" for i in range(channels)]
        return {
            "channels": names,
            "pixels": f"values as in the training arrays (range {rec.get('range')})",
            "window": list(rec.get("size") or []),
            "normalization": {
                "mean": [float(v) for v in rec["mean"]] if norm else [0.0] * channels,
                "std": [float(v) for v in rec["std"]] if norm else [1.0] * channels,
                "clip": None,
                "nan_to_zero": False,
                "text": "per-channel (x - mean) / std" if norm else "none",
            },
            "wavelengths_um": rec.get("wavelengths"),
        }

    def preprocessor(self, card: dict):
        rec = card["preprocessing"]
        dims, channels = int(rec["spatial_dims"]), int(rec["channels"])

        def prepare(x) -> torch.Tensor:
            t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
            if t.ndim == dims and channels == 1:
                t = t[None]
            if t.ndim != dims + 1 or t.shape[0] != channels:
                raise DataError(
                    "input",
                    f"expected one image of {channels} x {' x '.join(map(str, rec['size']))} "
                    f"(C x {'D x ' if dims == 3 else ''}H x W), got shape {tuple(t.shape)}",
                )
            t = check_scale(t, rec.get("range"))
            if rec.get("normalize", True):
                shape = (-1,) + (1,) * dims
                t = (t - torch.tensor(rec["mean"]).reshape(shape)) / torch.tensor(rec["std"]).reshape(shape)
            return t.float()

        return prepare

    def embed(self, model, data, out, **options):
        """Embeddings of a ``.npy``/``.npz`` file, normalised with the checkpoint's statistics."""
        options = accept_options(options, {"batch_size": "batch_size"}, "embed")
        out = check_output(out, [data], what="embed out")  # before computing anything
        cfg = config_from_card(model.card, data=data)
        x, y = read_array_file(data)
        ds = self.prepare(adapt(x, y, spatial_dims=model.card["preprocessing"]["spatial_dims"]), cfg, model.card)
        return write_embeddings(model, ds, out, batch_size=options.get("batch_size") or 32)

    def example(self, folder: Path) -> DomainExample:
        """Images and labels saved as ``.npz`` (what a notebook user holds in memory)."""
        folder = Path(folder)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (16, 3, 16, 16)).astype(np.uint8)
        path = folder / "images.npz"
        np.savez(path, images=x, labels=rng.integers(0, 2, 16))
        bad = folder / "broken.npz"
        bad.write_bytes(b"not a zip")
        config = {
            "domain": "arrays",
            "out": str(folder / "pretrain"),
            "data": {"path": str(path)},
            "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
            "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False, "warmup_steps": 1},
        }
        return DomainExample(config=config, bad_file=bad)
