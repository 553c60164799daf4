"""``steps_for_cpu_budget``: the same CPU seconds for objectives of different step costs."""

from __future__ import annotations

import pytest
import torch

import domainfm
from domainfm.errors import ConfigError


def _cfg(out, objective: dict) -> dict:
    return {
        "domain": "synthetic",
        "out": str(out),
        "data": {"img_size": 16, "options": {"num_samples": 32}},
        "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2, "class_token": True},
        "objective": objective,
        "train": {
            "steps": 100,
            "batch_size": 8,
            "warmup_steps": 10,
            "ckpt_every": 50,
            "log_every": 5,
            "progress": False,
            "tensorboard": False,
        },
    }


def test_budget_scales_steps_and_the_schedule_and_never_writes_the_run_folder(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    cfg = _cfg(out, {"name": "mae"})
    small = domainfm.steps_for_cpu_budget(cfg, cpu_seconds=0.2, probe_steps=3)
    large = domainfm.steps_for_cpu_budget(cfg, cpu_seconds=2.0, probe_steps=3)
    assert not out.exists()  # the timing runs happen in a temporary folder
    assert large["train"]["steps"] > small["train"]["steps"] >= 1
    t = large["train"]
    # warmup 10%, checkpoints at 50%, a log line every 5% of the run, as in the given config
    assert t["warmup_steps"] == max(1, round(0.1 * t["steps"]))
    assert t["ckpt_every"] == max(1, min(t["steps"], round(0.5 * t["steps"])))
    assert cfg["train"]["steps"] == 100  # the caller's dict is not changed


def test_dino_teacher_warmup_keeps_its_share_and_bad_budgets_are_refused(tmp_path):
    torch.set_num_threads(1)
    obj = {
        "name": "dino",
        "prototypes": 16,
        "head_hidden_dim": 32,
        "head_bottleneck_dim": 16,
        "local_crops": 0,
        "teacher_temp_warmup_steps": 30,
    }
    budget = domainfm.steps_for_cpu_budget(_cfg(tmp_path / "d", obj), cpu_seconds=1.0, probe_steps=2)
    steps = budget["train"]["steps"]
    assert budget["objective"]["teacher_temp_warmup_steps"] == max(1, min(steps, round(0.3 * steps)))
    with pytest.raises(ConfigError, match="cpu_seconds"):
        domainfm.steps_for_cpu_budget(_cfg(tmp_path / "e", {"name": "mae"}), cpu_seconds=0)
