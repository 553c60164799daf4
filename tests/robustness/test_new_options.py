"""Options added with FSDP, probe pooling and segmentation means: a bad value is one line naming the key,
and nothing of the refused run is written."""

from __future__ import annotations

import pytest
import yaml

import domainfm
from domainfm.errors import ConfigError
from tests.conftest import tiny_config
from tests.robustness.conftest import assert_one_line_error, run_cli


@pytest.mark.parametrize(
    "override, names",
    [
        ("train.strategy=zero", ["train.strategy", "ddp or fsdp"]),
        ("finetune.background=maybe", ["finetune.background", "true or false"]),
        ("model.global_pool=max", ["model.global_pool", "token+avg"]),
        ("model.global_pool=token+avg", ["model.global_pool", "model.class_token"]),
    ],
)
def test_bad_option_is_one_line_naming_the_key_and_writes_nothing(tmp_path, capsys, override, names):
    cfg = tiny_config(tmp_path / "run", train={"steps": 2})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, err = run_cli(["pretrain", path, "--set", override], capsys)
    assert code == 2
    assert_one_line_error(err, *names)
    assert not (tmp_path / "run").exists()


def test_bad_cpu_budget_is_refused_before_any_timing_run(tmp_path):
    cfg = tiny_config(tmp_path / "run", train={"steps": 2})
    with pytest.raises(ConfigError, match="cpu_seconds must be > 0"):
        domainfm.steps_for_cpu_budget(cfg, cpu_seconds=-5)
    assert not (tmp_path / "run").exists()
