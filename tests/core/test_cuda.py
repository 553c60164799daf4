"""CUDA paths (bf16 autocast, fused AdamW, device placement): run where a GPU is present."""

import pytest
import torch

import domainfm
from tests.conftest import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def test_bf16_pretrain_and_load_on_cuda(tmp_path):
    ckpt = domainfm.pretrain(tiny_config(tmp_path / "run", train={"steps": 3, "device": "cuda"}))
    model = domainfm.load(ckpt, device="cuda")
    z = model.embed(torch.rand(2, 1, 32, 32, device="cuda"))
    assert z.device.type == "cuda" and torch.isfinite(z).all()
