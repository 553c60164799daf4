"""Tiny checkpoints of every domain and task kind, and their exports, built once per session.

Each case is ``(checkpoint, raw, kit_input)``: ``raw`` is one input as the domain reads it (Hounsfield units,
band values with a nodata pixel, RGB 0..255 tiles), ``kit_input`` what the checkpoint is given for it (the
same array; the checkpoint's own preprocessing normalises it). Exports are shared between tests: ``exported(case,
fmt)`` writes one file per case and format, once.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import domainfm
from domainfm.demo import example_checkpoint
from domainfm.pathology.synthetic import synthetic_he_image
from tests.conftest import tiny_config


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _medical_3d(folder: Path) -> dict:
    seg, example = example_checkpoint("medical", folder, task="segmentation")
    encoder = domainfm.load(folder / "pretrain").path
    hu = np.random.default_rng(0).uniform(-400, 500, (16, 16, 16)).astype(np.float32)
    return {"seg": seg, "encoder": encoder, "example": example, "raw": hu[None]}


def _remote_sensing(folder: Path) -> dict:
    seg, example = example_checkpoint("remote_sensing", folder, task="segmentation")
    encoder = domainfm.load(folder / "pretrain").path
    bands = np.random.default_rng(1).uniform(0, 3000, (4, 32, 32)).astype(np.float32)
    bands[:, :3, :5] = np.nan  # nodata: 0 after normalisation in the kit, NaN in, 0 inside the graph
    return {"seg": seg, "encoder": encoder, "example": example, "raw": bands}


def _pathology(folder: Path) -> dict:
    for cls, blank in (("background", True), ("tissue", False)):
        (folder / "tiles" / cls).mkdir(parents=True)
        for i in range(4):
            rgb = synthetic_he_image(32, 32, seed=i, blank=blank, tissue_fraction=1.0)
            Image.fromarray(rgb).save(folder / "tiles" / cls / f"{i}.png")
    opts = {"target_mpp": 1.0, "tile_size": 32, "min_tissue": 0.4}
    cfg = tiny_config(folder / "pre", domain="pathology", data={"path": str(folder / "tiles"), "img_size": 32})
    cfg["data"]["options"] = opts
    cfg["model"]["class_token"] = True
    encoder = domainfm.pretrain(cfg)
    cls = domainfm.finetune(
        encoder, task="classification", out=folder / "cls", overrides=["train.steps=2", "train.batch_size=4"]
    )
    rgb = synthetic_he_image(32, 32, seed=9, tissue_fraction=1.0)
    return {"cls": cls, "encoder": encoder, "raw": rgb.transpose(2, 0, 1).astype(np.float32), "kit": rgb}


def _medical_2d(folder: Path) -> dict:
    rng = np.random.default_rng(2)
    arrays = {}
    for split, n in (("train", 16), ("val", 6), ("test", 4)):
        labels = np.arange(n) % 2
        imgs = rng.integers(-900, 100, (n, 16, 16)).astype(np.int16)
        imgs[labels == 1, 4:12, 4:12] = 300
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = imgs, labels[:, None]
    np.savez(folder / "ct2d.npz", **arrays)
    opts = {"spatial_dims": 2, "modality": "ct", "window_range": [-1000, 400]}
    cfg = tiny_config(folder / "pre", domain="medical", data={"path": str(folder / "ct2d.npz"), "img_size": 16})
    cfg["data"]["options"] = opts
    cfg["model"].update({"patch_size": 4, "num_registers": 2})
    cls = domainfm.finetune(
        domainfm.pretrain(cfg), task="classification", out=folder / "cls", overrides=["train.steps=2"]
    )
    return {"cls": cls, "raw": rng.uniform(-1000, 500, (1, 16, 16)).astype(np.float32)}


def _tokens(folder: Path) -> dict:
    cfg = tiny_config(folder / "pre")
    cfg["model"].update({"class_token": True, "num_registers": 2, "global_pool": "token+avg"})
    encoder = domainfm.pretrain(cfg)
    return {"encoder": encoder, "raw": np.random.default_rng(3).random((1, 32, 32)).astype(np.float32)}


BUILDERS = {
    "medical_3d": _medical_3d,
    "remote_sensing": _remote_sensing,
    "pathology": _pathology,
    "medical_2d": _medical_2d,
    "tokens": _tokens,
}


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
    """``cases(name)``: the checkpoints and inputs of one case, built on first use."""
    built: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in built:
            with quiet():
                built[name] = BUILDERS[name](tmp_path_factory.mktemp(name))
        return built[name]

    return get


@pytest.fixture(scope="session")
def exported(cases, tmp_path_factory):
    """``exported(case, key, fmt, **options)``: the export of ``cases(case)[key]``, written once."""
    done: dict[tuple, Path] = {}
    folder = tmp_path_factory.mktemp("exports")

    def get(case: str, key: str, fmt: str, **options) -> Path:
        ident = (case, key, fmt, tuple(sorted(options.items())))
        if ident not in done:
            name = "-".join([case, key, *(f"{k}{v}" for k, v in sorted(options.items()))])
            with quiet():
                done[ident] = domainfm.export(cases(case)[key], folder / f"{name}.{fmt}", **options)
        return done[ident]

    return get
