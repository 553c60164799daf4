"""Shared fixtures: tiny model settings and the path to ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# tiny models gain nothing from more threads, and oversubscribed OpenMP threads stall on busy machines
torch.set_num_threads(1)

TINY_MODEL = {"name": "vit-tiny", "depth": 2, "embed_dim": 64, "num_heads": 2, "patch_size": 8}
QUIET_TRAIN = {"progress": False, "tensorboard": False, "log_every": 1}


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data absent (a user's clone without the shared samples)")
    return SHARED_DATA


def tiny_config(out, **sections) -> dict:
    """A synthetic-domain config for a tiny, fast model; ``sections`` update it."""
    cfg = {
        "domain": "synthetic",
        "out": str(out),
        "data": {"img_size": 32, "options": {"num_samples": 64}},
        "model": dict(TINY_MODEL),
        "objective": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, "proj_dim": 32, "proj_hidden_dim": 64},
        "train": {"steps": 4, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, **QUIET_TRAIN},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg
