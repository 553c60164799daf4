"""A run that is not learning says so: flat-from-the-start runs stop with their cause (or warn when told)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import domainfm
from domainfm import NotLearningError
from domainfm.config import ObjectiveConfig
from domainfm.models import build_encoder
from domainfm.ssl import build_objective
from domainfm.train.checkpoint import list_checkpoints
from domainfm.train.learning import LearningCheck
from tests.conftest import tiny_config


def _feed(check: LearningCheck, losses) -> list:
    return [check.update(step, loss) for step, loss in enumerate(losses, start=1)]


def test_a_falling_loss_learns_and_a_constant_one_does_not():
    falling = LearningCheck(total=100, warmup=10, tolerance=0.01)
    _feed(falling, [2.0 * 0.99**s for s in range(100)])
    assert falling.record["checked"] and falling.record["flat"] is False
    constant = LearningCheck(total=100, warmup=10, tolerance=0.01)
    verdicts = _feed(constant, [8.3 + 0.001 * (-1) ** s for s in range(100)])
    assert constant.record["flat"] is True and verdicts.count(True) == 1  # decided once, at the check step
    assert "train.stop_if_not_learning=false" in constant.message("hint")


def test_short_and_resumed_runs_are_not_checked():
    short = LearningCheck(total=10, warmup=1, tolerance=0.01)
    assert not any(v is not None for v in _feed(short, [1.0] * 10))
    assert "shorter than" in short.record["reason"]
    resumed = LearningCheck(total=100, warmup=1, tolerance=0.01, start=50)
    assert not any(v is not None for v in _feed(resumed, [1.0] * 100)) and "resumed" in resumed.record["reason"]


def test_a_run_that_cannot_move_stops_with_the_setting_to_change(tmp_path):
    frozen = tiny_config(tmp_path / "run", train={"steps": 40, "lr": 0.0, "ckpt_every": 100})
    with pytest.raises(NotLearningError, match=r"not learning.*train\.lr"):
        domainfm.pretrain(frozen)
    assert list_checkpoints(tmp_path / "run") == []  # stopped before the end: nothing half-trained left as final


def test_keep_going_warns_and_records_the_verdict_in_the_card(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "run", train={"steps": 40, "lr": 0.0, "stop_if_not_learning": False})
    ckpt = domainfm.pretrain(cfg)
    learning = json.loads((ckpt / "card.json").read_text())["learning"]
    assert learning["checked"] and learning["flat"] and learning["signal"] == "loss"
    assert "warning: the run is not learning" in capsys.readouterr().err


def test_a_healthy_tiny_run_is_recorded_as_learning(tmp_path):
    ckpt = domainfm.pretrain(tiny_config(tmp_path / "run", train={"steps": 40, "lr": 3e-3}))
    learning = json.loads((ckpt / "card.json").read_text())["learning"]
    assert learning["checked"] and learning["flat"] is False and learning["relative_change"] > 0.01


def test_dino_names_a_uniform_teacher_as_the_cause():
    enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    dino = build_objective(enc, ObjectiveConfig(name="dino", prototypes=64, head_hidden_dim=32))
    log_k = math.log(64)
    flat, why = dino.learning_verdict({"teacher_entropy": torch.tensor(log_k), "teacher_mi": torch.tensor(1e-5)})
    assert flat and "uniform" in why and "objective.head_bn" in why
    healthy = dino.learning_verdict({"teacher_entropy": torch.tensor(0.8 * log_k), "teacher_mi": torch.tensor(0.9)})
    assert healthy == (False, "")
    assert dino.learning_verdict({}) is None
