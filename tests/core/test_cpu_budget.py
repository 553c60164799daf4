"""``steps_for_cpu_budget``: the same CPU seconds for objectives of different step costs.

The step costs come from a fake CPU clock (``domainfm.pipelines._cpu_now``), so what is checked does not
depend on the machine's load: the probe runs are real, only the clock they are timed with is not.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import domainfm
from domainfm import pipelines
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


def _fake_clock(monkeypatch, step_seconds) -> list[int]:
    """Each read of the CPU clock advances it by the next of ``step_seconds`` (cycled); returns a list whose
    length counts the probe runs' timed steps."""
    costs = itertools.cycle(step_seconds)
    now = {"t": 0.0}
    reads: list[int] = []

    def clock() -> float:
        now["t"] += next(costs)
        reads.append(1)
        return now["t"]

    monkeypatch.setattr(pipelines, "_cpu_now", clock)
    return reads


def test_budget_scales_steps_and_the_schedule_and_never_writes_the_run_folder(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    _fake_clock(monkeypatch, [0.1])  # every step costs 0.1 CPU s
    out = tmp_path / "run"
    cfg = _cfg(out, {"name": "mae"})
    small = domainfm.steps_for_cpu_budget(cfg, cpu_seconds=0.25, probe_steps=3)
    large = domainfm.steps_for_cpu_budget(cfg, cpu_seconds=2.0, probe_steps=3)
    assert not out.exists()  # the timing runs happen in a temporary folder
    assert (small["train"]["steps"], large["train"]["steps"]) == (2, 20)
    t = large["train"]
    # warmup 10%, checkpoints at 50%, a log line every 5% of the run, as in the given config
    assert (t["warmup_steps"], t["ckpt_every"], t["log_every"]) == (2, 10, 1)
    assert cfg["train"]["steps"] == 100  # the caller's dict is not changed


def test_too_fast_to_time_probes_run_longer_and_the_budget_holds_at_the_fastest_step(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(pipelines, "MIN_MEASURED_CPU_S", 0.5)
    reads = _fake_clock(monkeypatch, [0.05, 0.15])  # alternating cheap and dear steps
    budget = domainfm.steps_for_cpu_budget(_cfg(tmp_path / "r", {"name": "mae"}), cpu_seconds=3.0, probe_steps=2)
    # 2 timed steps (0.2 s) are under the noise floor: the probe ran again with more steps
    assert len(reads) > 3
    steps = budget["train"]["steps"]
    assert steps == 30  # 3.0 s over the mean step of 0.1 s
    assert steps * 0.05 <= 3.0  # never more than the budget allows at the fastest step seen


def test_a_step_too_fast_to_measure_is_refused_in_one_line(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(pipelines, "MAX_PROBE_STEPS", 4)
    _fake_clock(monkeypatch, [0.0])  # a clock that never moves
    with pytest.raises(ConfigError, match="cannot measure a step's CPU time") as exc:
        domainfm.steps_for_cpu_budget(_cfg(tmp_path / "z", {"name": "mae"}), cpu_seconds=1.0, probe_steps=2)
    assert "\n" not in str(exc.value)


def test_dino_teacher_warmup_keeps_its_share_and_bad_budgets_are_refused(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    _fake_clock(monkeypatch, [0.1])
    obj = {
        "name": "dino",
        "prototypes": 16,
        "head_hidden_dim": 32,
        "head_bottleneck_dim": 16,
        "local_crops": 0,
        "teacher_temp_warmup_steps": 30,
    }
    budget = domainfm.steps_for_cpu_budget(_cfg(tmp_path / "d", obj), cpu_seconds=1.0, probe_steps=2)
    assert budget["train"]["steps"] == 10 and budget["objective"]["teacher_temp_warmup_steps"] == 3
    with pytest.raises(ConfigError, match="cpu_seconds"):
        domainfm.steps_for_cpu_budget(_cfg(tmp_path / "e", {"name": "mae"}), cpu_seconds=0)
    with pytest.raises(ConfigError, match="buys no step"):
        domainfm.steps_for_cpu_budget(_cfg(tmp_path / "f", {"name": "mae"}), cpu_seconds=0.05, probe_steps=2)
