"""Imported checkpoints through every command; continual pretraining from imported or trained encoders."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

import domainfm
from domainfm.cli import run
from domainfm.errors import ConfigError
from domainfm.train.checkpoint import load_tensors
from tests.conftest import QUIET_TRAIN, tiny_config


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A tiny timm ViT (64-dim, 1 head, 8 px patches, class token, layer scale) imported for 1-channel shapes."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("imp")
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=64,
        num_heads=1,
        depth=2,
        init_values=0.1,
    ).eval()
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp / "vit.safetensors"))
    run(
        [
            "import-weights",
            str(tmp / "vit.safetensors"),
            "--domain",
            "synthetic",
            "--out",
            str(tmp / "ckpt"),
            "--num-samples",
            "64",
        ]
    )
    return tmp / "ckpt"


def _losses(run_dir) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "loss"]


def _init_config(out, init, **train):
    return {
        "domain": "synthetic",
        "out": str(out),
        "data": {"img_size": 32, "options": {"num_samples": 64}},
        "model": {"patch_size": 8, "init": str(init)},
        "objective": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, "mask_ratio": 0.5},
        "train": {"steps": 30, "batch_size": 16, "lr": 2e-3, "warmup_steps": 2, **QUIET_TRAIN, **train},
    }


def test_imported_checkpoint_works_with_info_embed_finetune_evaluate(imported, tmp_path, capsys):
    capsys.readouterr()
    run(["info", str(imported)])
    card = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert card["stage"] == "import" and card["import"]["channels"][0]["rule"] == "sum of red+green+blue"
    run(["embed", str(imported), "--data", str(tmp_path), "--out", str(tmp_path / "emb.npz")])
    assert np.load(tmp_path / "emb.npz")["embeddings"].shape[1] == 64
    run(
        [
            "finetune",
            str(imported),
            "--task",
            "classification",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / "ft"),
            "--set",
            "train.progress=false",
            "--set",
            "train.tensorboard=false",
        ]
    )
    assert domainfm.load(tmp_path / "ft").logits(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    res = domainfm.evaluate(
        imported,
        protocol="knn",
        fractions=(1.0,),
        seeds=1,
        n_boot=20,
        k=5,
        plots=False,
        out=tmp_path / "eval",
        max_train=32,
        max_test=32,
    )
    assert res.meta["encoders"] == ["pretrained", "random"]


def test_continual_pretraining_from_import_loss_falls(imported, tmp_path):
    ckpt = domainfm.pretrain(_init_config(tmp_path / "cpt", imported, layer_decay=0.75))
    losses = _losses(tmp_path / "cpt")
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])
    card = json.loads((ckpt / "card.json").read_text())
    assert card["init"]["path"] == str(imported) and card["init"]["stage"] == "import"
    assert (
        card["encoder"]["pos_embed_type"] == "learned" and card["encoder"]["init_values"] is not None
    )  # layer scale kept
    assert domainfm.load(ckpt).features(torch.randn(1, 1, 32, 32))["tokens"].shape == (1, 16, 64)
    groups = json.loads((ckpt / "trainer_state.json").read_text())["optimizer"]["param_groups"]
    # depth 2 with layer_decay 0.75: token maker 0.75^3, blocks 0.75^2 and 0.75, norm and new heads 1
    assert sorted({round(g["lr_scale"], 4) for g in groups}) == [0.4219, 0.5625, 0.75, 1.0]


def test_init_from_a_trained_checkpoint_starts_from_its_weights(tmp_path):
    base = domainfm.pretrain(tiny_config(tmp_path / "base"))
    cfg = tiny_config(tmp_path / "cont", model={"init": str(base)}, train={"lr": 0.0, "steps": 1})
    cfg["model"] = {"patch_size": 8, "init": str(base)}  # size not repeated: the init decides
    ckpt = domainfm.pretrain(cfg)
    before, after = load_tensors(base), load_tensors(ckpt)
    enc = [k for k in before if k.startswith("encoder.")]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc)  # lr 0: the init's weights, untouched


def test_conflicting_init_is_refused_naming_the_keys(imported, tmp_path):
    cfg = _init_config(tmp_path / "bad", imported)
    cfg["model"].update({"patch_size": 16, "embed_dim": 96})
    with pytest.raises(ConfigError, match=r"model.patch_size \(config \[16, 16\], init \[8, 8\]\).*model.embed_dim"):
        domainfm.pretrain(cfg)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="train.layer_decay must be in"):
        domainfm.pretrain(_init_config(tmp_path / "bad2", imported, layer_decay=1.5))


def test_cli_pretrain_init(imported, tmp_path, capsys):
    run(
        [
            "pretrain",
            "--domain",
            "synthetic",
            "--init",
            str(imported),
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / "cli"),
            "--num-samples",
            "16",
            "--set",
            "model.patch_size=8",
            "--set",
            "data.img_size=32",
            "--set",
            "train.progress=false",
            "--set",
            "train.layer_decay=0.5",
        ]
    )
    card = json.loads((domainfm.load(tmp_path / "cli").path / "card.json").read_text())
    assert card["config"]["model"]["init"] == str(imported) and card["config"]["train"]["layer_decay"] == 0.5
    assert card["init"]["stage"] == "import"
