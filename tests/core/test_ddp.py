"""A 2-process DDP run on gloo (CPU) through torchrun, as a user would launch it."""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from domainfm.train.checkpoint import list_checkpoints, load_card
from tests.helpers import TINY_MODEL_FLAGS, free_port


def test_two_process_gloo_ddp(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "domainfm.cli",
        "pretrain",
        "--domain",
        "synthetic",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--num-samples",
        "32",
        *TINY_MODEL_FLAGS,
        "--set",
        "train.tensorboard=false",
        "--set",
        "objective.decoder_depth=1",
        "--set",
        "objective.decoder_dim=32",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = list_checkpoints(out)
    assert [c.name for c in ckpts] == ["ckpt-0000003"]
    assert load_card(out)["step"] == 3
    weights = load_file(str(ckpts[-1] / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
