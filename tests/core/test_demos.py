"""Every domain's demo runs end to end in quick mode (a smoke test of what `make demos` shows)."""

import math

import pytest

import domainfm
from domainfm.train.checkpoint import load_card


def _numbers(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _numbers(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f"{prefix}{k}", float(v)


@pytest.mark.parametrize("domain", ["synthetic", "medical", "remote_sensing", "pathology"])
def test_quick_demo_runs_and_leaves_checkpoints(domain, tmp_path):
    figures = domainfm.demo(domain, tmp_path / domain, quick=True)
    numbers = dict(_numbers(figures))
    assert numbers and all(not math.isnan(v) for k, v in numbers.items() if "acc" in k or "loss" in k), numbers
    ckpts = sorted(p.parent for p in (tmp_path / domain).rglob("card.json"))
    assert ckpts, "the demo left no checkpoint"
    assert all(load_card(c)["domain"] == domain for c in ckpts)
    if domain == "synthetic":
        assert (tmp_path / domain / "pretrain" / "reconstruction.png").stat().st_size > 1000
        assert 0.0 <= figures["linear_probe_acc_pretrained"] <= 1.0
