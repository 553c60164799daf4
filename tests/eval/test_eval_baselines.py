"""``evaluate(..., baseline="random,supervised")``: a network trained from scratch on the same labels beside
every result, gains against each baseline with paired intervals, the compute of each side, and probe settings
that never read the test split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import domainfm
from domainfm.eval import evaluate
from domainfm.eval.finetune import finetune_classifier
from domainfm.eval.protocols import linear_probe
from domainfm.models import build_encoder
from tests.conftest import tiny_config

VS_KEYS = {"gain", "low", "high"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pretrain") / "run"
    cfg = tiny_config(out, data={"img_size": 16, "options": {"num_samples": 96}})
    cfg["model"].update(patch_size=8, depth=1, embed_dim=32)
    return domainfm.pretrain(cfg)


def test_classification_records_carry_gains_against_random_and_supervised(ckpt, tmp_path):
    res = evaluate(
        ckpt,
        protocol="linear,finetune",
        fractions=(0.5, 1.0),
        seeds=2,
        n_boot=40,
        max_train=40,
        max_test=24,
        baseline=("random", "supervised"),
        supervised_kwargs={"max_epochs": 2},
        finetune_kwargs={"steps": 3},
        out=tmp_path,
        plots=False,
    )
    sup = [r for r in res if r["encoder"] == "supervised"]
    assert sup and {r["protocol"] for r in sup} == {"supervised"} and {r["fraction"] for r in sup} == {0.5, 1.0}
    assert all(r["seeds"] == 2 for r in sup)
    for r in (r for r in res if r["encoder"] == "pretrained"):
        assert set(r["vs"]) == {"random", "supervised"} and all(set(g) == VS_KEYS for g in r["vs"].values())
        assert r["gain"] == r["vs"]["random"]["gain"] and r["vs"]["random"]["low"] <= r["vs"]["random"]["high"]
    assert all("random" not in (r.get("vs") or {}) for r in res if r["encoder"] == "random")
    compute = res.meta["compute"]
    assert compute["pretraining"]["steps"] == 4 and compute["encoder_params"] > 0
    assert compute["supervised"]["runs"] == 4 and compute["supervised"]["params"] > compute["encoder_params"]
    assert set(compute["adaptation_seconds"]) == {"frozen", "finetune"}
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["meta"]["compute"]["supervised"]["arch"].startswith("resnet18")
    md = (tmp_path / "report.md").read_text()
    assert "## Was pretraining worth it?" in md and md.count("vs supervised") == 4  # 2 protocols x 2 fractions


def test_segmentation_supervised_baseline_is_a_unet_on_the_same_masks(ckpt):
    pytest.importorskip("monai", reason="the segmentation baseline is MONAI's U-Net (domainfm[medical])")
    res = evaluate(
        ckpt,
        protocol="finetune",
        fractions=(1.0,),
        seeds=1,
        n_boot=20,
        max_train=12,
        max_test=6,
        baseline="random,supervised",
        overrides=["finetune.task=segmentation", "data.options.segmentation=true"],
        supervised_kwargs={"max_epochs": 2},
        finetune_kwargs={"steps": 2},
        plots=False,
    )
    sup = [r for r in res if r["encoder"] == "supervised"]
    assert {r["metric"] for r in sup} == {"dice", "miou"} and all(0 <= r["mean"] <= 1 for r in sup)
    rec = res.get("pretrained", "finetune", "dice", fraction=1.0)
    assert set(rec["vs"]) == {"random", "supervised"}
    assert res.meta["compute"]["supervised"]["arch"] == "monai-unet"


def test_the_baseline_is_optional_and_random_stays_the_default(ckpt):
    res = evaluate(ckpt, protocol="knn", fractions=(1.0,), seeds=1, n_boot=20, max_train=32, max_test=16, plots=False)
    assert {r["encoder"] for r in res} == {"pretrained", "random"} and res.meta["compute"]["supervised"] is None
    assert set(res.get("pretrained", "knn", "auroc", fraction=1.0)["vs"]) == {"random"}


def test_probe_settings_do_not_read_the_test_split():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    x = rng.normal(size=(60, 8)) + y[:, None]
    test_a, test_b = rng.normal(size=(20, 8)), rng.normal(size=(50, 8)) * 10
    _, info_a = linear_probe(x, y, test_a, return_info=True)
    _, info_b = linear_probe(x, y, test_b, return_info=True)
    assert info_a == info_b  # C is chosen by cross-validation on the training labels alone
    enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    xi, yi = torch.randn(20, 1, 16, 16), torch.arange(20) % 2
    small, big = torch.randn(4, 1, 16, 16), torch.randn(12, 1, 16, 16)
    both = torch.cat([small, big])
    s1, i1 = finetune_classifier(enc, xi, yi, small, 2, steps=5)
    s2, i2 = finetune_classifier(enc, xi, yi, both, 2, steps=5)
    assert np.allclose(s1, s2[:4], atol=1e-5) and i1["steps"] == i2["steps"]  # same training, whatever the test


def test_pretraining_seeds_enter_the_intervals_and_must_share_the_recipe(ckpt, tmp_path):
    cfg = tiny_config(tmp_path / "seed1", data={"img_size": 16, "options": {"num_samples": 96}})
    cfg["model"].update(patch_size=8, depth=1, embed_dim=32)
    cfg["train"]["seed"] = 1
    second = domainfm.pretrain(cfg)
    res = evaluate([ckpt, second], protocol="knn", fractions=(1.0,), seeds=2, n_boot=30, max_train=32, max_test=16)
    rec = res.get("pretrained", "knn", "auroc", fraction=1.0)
    assert (
        rec["seeds"] == 4
        and len(rec["per_seed"]) == 4
        and res.get("random", "knn", "auroc", fraction=1.0)["seeds"] == 2
    )
    assert res.meta["pretraining_seeds"] == 2 and res.meta["encoders"] == ["pretrained", "random"]
    other = tiny_config(tmp_path / "wider", data={"img_size": 16, "options": {"num_samples": 32}})
    other["model"].update(patch_size=8, depth=1, embed_dim=64)
    with pytest.raises(domainfm.errors.CheckpointError, match="pretraining seeds of one recipe"):
        evaluate([ckpt, domainfm.pretrain(other)], protocol="knn", fractions=(1.0,), seeds=1)
