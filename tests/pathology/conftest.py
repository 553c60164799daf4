"""Fixtures of the pathology tests: real pyramidal TIFF slides written with tifffile, once per session."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "pathology"  # repo root/../shared
TINY = {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}


@pytest.fixture
def shared_file():
    """``shared_file(name)``: a file of ../shared/data/pathology, or skip the test when it is absent."""

    def get(name: str) -> Path:
        path = SHARED / name
        if not path.exists():
            pytest.skip(f"{name}: ../shared/data absent")
        return path

    return get


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory) -> Path:
    """6 synthetic H&E slides (3 with a dense-nuclei 'tumour' region) at 0.5 µm/px, plus one blank."""
    from domainfm.pathology.synthetic import write_synthetic_slide

    root = tmp_path_factory.mktemp("slides")
    for i in range(6):
        write_synthetic_slide(root / f"s{i}.tif", (768, 640), mpp=0.5, seed=i, tumor=bool(i % 2))
    write_synthetic_slide(root / "blank.tif", (512, 512), mpp=0.5, blank=True)
    return root


@pytest.fixture(scope="session")
def labels_csv(slide_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "slides.csv"
    rows = ["slide,label"] + [f"s{i}.tif,{'tumor' if i % 2 else 'normal'}" for i in range(6)]
    path.write_text("\n".join(rows) + "\n")
    return path


def pretrain_config(data, out, steps: int = 2, objective: str = "mae", **options) -> dict:
    opts = {"target_mpp": 1.0, "tile_size": 64, "min_tissue": 0.4, **options}
    return {
        "domain": "pathology",
        "out": str(out),
        "data": {"path": str(data), "img_size": 32, "options": opts},
        "model": dict(TINY),
        "objective": {"name": objective},
        "train": {"steps": steps, "batch_size": 8, "progress": False, "tensorboard": False, "warmup_steps": 1},
    }


@pytest.fixture(scope="session")
def pretrained(slide_dir, tmp_path_factory) -> Path:
    """A tiny encoder pretrained (MAE + contrastive, 2 steps) on the synthetic slides via the API."""
    import torch

    import domainfm

    out = tmp_path_factory.mktemp("pretrain")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return domainfm.pretrain(pretrain_config(slide_dir, out, steps=2, objective="mae+contrastive"))
    finally:
        torch.set_num_threads(n)
