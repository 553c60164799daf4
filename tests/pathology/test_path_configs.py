"""The pathology YAML recipes parse and validate against the typed config and the domain options."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from domainfm.runconfig import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pathology"


@pytest.mark.parametrize("name", ["tiles_pretrain.yaml", "quick_cpu.yaml"])
def test_pretrain_recipes_validate(name):
    cfg = load_config(CONFIGS / name, check_paths=False)
    opts = cfg.options
    assert cfg.domain == "pathology" and opts.target_mpp > 0 and opts.tile_size >= 32
    assert cfg.objective.name == "mae+contrastive"


@pytest.mark.parametrize("name", ["mil.yaml", "tile_classification.yaml"])
def test_finetune_recipes_merge_into_a_pretraining_config(name):
    changes = yaml.safe_load((CONFIGS / name).read_text())
    cfg = load_config(CONFIGS / "quick_cpu.yaml", updates=changes, check_paths=False)
    assert cfg.finetune.task in ("mil", "classification") and cfg.options.target_mpp == 1.0
