"""Recipes from the data: what a run with only --domain/--data/--objective resolves to, per domain."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

import domainfm
from domainfm.cli import run
from domainfm.config import parse_config
from domainfm.recipes import CPU_MODEL, DataFacts, apply_recipe, resolve_recipe
from domainfm.registry import get_domain
from domainfm.runconfig import load_config
from tests.conftest import ROOT

XRAYS = DataFacts(spatial_dims=2, size=(28, 28), channels=1, items=2428, resizable=True)


def _decided(recipe) -> dict:
    return {d.key: d.value for d in recipe.decisions}


def test_dino_on_28px_xrays_resolves_to_the_small_image_preset():
    cfg = parse_config({"objective": {"name": "dino"}, "train": {"steps": 1600}})
    apply_recipe(cfg, resolve_recipe(cfg, XRAYS, "cpu"), quiet=True)
    preset = yaml.safe_load((ROOT / "configs" / "objectives" / "dino_small_images.yaml").read_text())["objective"]
    resolved = {k: getattr(cfg.objective, k) for k in preset}
    assert resolved == preset
    assert (cfg.data.img_size, cfg.model.patch_size, cfg.model.class_token) == (28, 4, True)
    assert cfg.objective.teacher_temp_warmup_steps == 480 and cfg.train.warmup_steps == 160
    assert {k: getattr(cfg.model, k) for k in CPU_MODEL} == CPU_MODEL


def test_explicit_settings_win_and_are_not_recorded_as_decisions():
    cfg = parse_config(
        {"objective": {"name": "dino", "prototypes": 1024}, "model": {"patch_size": 7}, "train": {"lr": 3e-4}}
    )
    recipe = resolve_recipe(cfg, XRAYS, "cpu")
    apply_recipe(cfg, recipe, quiet=True)
    decided = _decided(recipe)
    assert "objective.prototypes" not in decided and "model.patch_size" not in decided and "train.lr" not in decided
    assert (cfg.objective.prototypes, cfg.model.patch_size, cfg.train.lr) == (1024, 7, 3e-4)
    assert decided["objective.head_hidden_dim"] == 256  # the keys left open are still decided


def test_device_and_item_count_choose_the_model_and_an_init_fixes_it():
    cfg = parse_config({"objective": {"name": "mae"}})
    assert "model.depth" in _decided(resolve_recipe(cfg, XRAYS, "cpu"))
    gpu_small = _decided(resolve_recipe(cfg, XRAYS, "cuda"))
    assert gpu_small["model.name"] == "vit-tiny" and "model.depth" not in gpu_small
    many = DataFacts(2, (224, 224), 3, 200_000, resizable=True)
    assert _decided(resolve_recipe(cfg, many, "cuda"))["model.name"] == "vit-small"
    cont = parse_config({"objective": {"name": "mae"}, "model": {"init": "runs/imported"}})
    decided = _decided(resolve_recipe(cont, XRAYS, "cpu"))
    assert not any(k.startswith("model.") for k in decided)  # the imported encoder's shape and patch stay
    assert "train.lr" not in decided  # continual pretraining keeps the gentle default learning rate


def test_large_2d_images_are_resized_to_224_with_16px_patches_and_a_cpu_mae_decoder():
    cfg = parse_config({"objective": {"name": "mae"}, "train": {"steps": 100}})
    decided = _decided(resolve_recipe(cfg, DataFacts(2, (1024, 1024), 1, 500, resizable=True), "cpu"))
    assert decided["data.img_size"] == 224 and decided["model.patch_size"] == 16
    assert decided["objective.decoder_dim"] == 64 and decided["train.warmup_steps"] == 10


def test_medical_npz_with_only_domain_data_objective_reads_2d_xrays_and_records_the_recipe(tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "xrays.npz"
    np.savez(npz, train_images=rng.integers(0, 255, (24, 28, 28), dtype=np.uint8))
    ckpt = domainfm.pretrain(
        {"domain": "medical", "out": str(tmp_path / "run"), "objective": {"name": "mae"}, "data": {"path": str(npz)}},
        overrides=["train.steps=2", "train.batch_size=8", "train.progress=false", "train.tensorboard=false"],
    )
    card = json.loads((ckpt / "card.json").read_text())
    decided = {d["key"]: d["value"] for d in card["recipe"]["decisions"]}
    assert card["recipe"]["facts"]["size"] == [28, 28] and card["recipe"]["device"] == "cpu"
    assert decided["data.img_size"] == 28 and decided["model.patch_size"] == 4
    assert card["encoder"]["img_size"] == [28, 28] and card["encoder"]["embed_dim"] == CPU_MODEL["embed_dim"]
    assert card["config"]["data"]["options"]["modality"] == "xray" and card["preprocessing"]["spatial_dims"] == 2
    assert any("not Hounsfield units" in d for d in card["preprocessing"]["decisions"])
    assert card["compute"]["steps"] == 2 and card["compute"]["cpu_seconds"] >= 0


def _example_without(domain: str, folder, *keys: str):
    """The domain's example config with the given data keys and the whole model section removed."""
    ex = get_domain(domain).example(folder)
    config = dict(ex.config)
    config["data"] = {k: v for k, v in config["data"].items() if k not in keys}
    config.pop("model", None)
    return load_config(config)


def test_medical_3d_volumes_keep_the_domain_crop_and_get_a_dividing_patch(tmp_path):
    cfg = _example_without("medical", tmp_path, "img_size")
    facts = get_domain("medical").data_facts(cfg)
    assert facts.spatial_dims == 3 and not facts.resizable
    decided = _decided(resolve_recipe(cfg, facts, "cpu"))
    assert "data.img_size" not in decided
    assert all(s % decided["model.patch_size"] == 0 for s in facts.size)


def test_remote_sensing_chips_come_from_the_scene_size(tmp_path):
    cfg = _example_without("remote_sensing", tmp_path, "img_size")
    facts = get_domain("remote_sensing").data_facts(cfg)
    assert facts.what == "scenes" and facts.channels is None and facts.resizable
    decided = _decided(resolve_recipe(cfg, facts, "cpu"))
    assert decided["data.img_size"] <= facts.side // 2 and decided["data.img_size"] >= 16


@pytest.mark.parametrize("domain", ["pathology", "arrays", "synthetic"])
def test_domains_that_fix_their_input_size_get_no_size_decision(domain, tmp_path):
    ex = get_domain(domain).example(tmp_path)
    cfg = load_config({**ex.config, "model": {}})
    facts = get_domain(domain).data_facts(cfg)
    decided = _decided(resolve_recipe(cfg, facts, "cpu"))
    assert "data.img_size" not in decided and "model.patch_size" in decided
    assert facts.items > 0 and facts.spatial_dims == 2


def test_cli_prints_each_decision_once(tmp_path, capsys):
    rng = np.random.default_rng(1)
    npz = tmp_path / "xrays.npz"
    np.savez(npz, train_images=rng.integers(0, 255, (16, 28, 28), dtype=np.uint8))
    args = ["pretrain", "--domain", "medical", "--data", str(npz), "--objective", "mae", "--steps", "2"]
    args += ["--out", str(tmp_path / "run"), "--set", "train.batch_size=8", "--set", "train.tensorboard=false"]
    assert run(args) == 0
    err = capsys.readouterr().err
    assert err.count("recipe: model.patch_size=4") == 1 and "recipe: data.img_size=28" in err


def test_remote_sensing_small_chips_of_large_scenes_get_the_small_image_settings():
    cfg = parse_config({"objective": {"name": "dino"}, "train": {"steps": 300}})
    scenes = DataFacts(2, (100, 100), None, 68, resizable=True, what="scenes")
    decided = _decided(resolve_recipe(cfg, scenes, "cpu"))
    assert decided["data.img_size"] == 32 and decided["objective.head_bn"] is True
    assert decided["objective.local_crop_scale"] == [0.1, 0.4] and decided["objective.local_crop_size"] == 12
