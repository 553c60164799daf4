"""End-to-end ``evaluate`` on a tiny pretrained checkpoint of the built-in synthetic domain."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import domainfm
from domainfm.data.sample import make_sample
from domainfm.errors import CheckpointError, ConfigError, DataError
from domainfm.eval import OnlineKNNProbe, add_evaluate_arguments, evaluate, evaluate_from_args


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pretrain")
    return domainfm.pretrain(
        {
            "domain": "synthetic",
            "out": str(out),
            "data": {"img_size": 32, "options": {"num_samples": 128}},
            "model": {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
            "train": {
                "steps": 3,
                "batch_size": 16,
                "progress": False,
                "tensorboard": False,
                "log_every": 1,
                "ckpt_every": 3,
            },
        }
    )


def test_frozen_protocols_write_report_with_gain_and_reuse_cached_embeddings(ckpt, tmp_path):
    out = tmp_path / "eval"
    res = evaluate(
        ckpt,
        protocol="linear,knn,fewshot",
        fractions=(0.25, 1.0),
        seeds=2,
        out=out,
        n_boot=100,
        shots=(1, 5),
        episodes=2,
        k=5,
        Cs=(0.1, 1.0),
    )
    assert res.meta["encoders"] == ["pretrained", "random"] and res.meta["n_test"] == 64
    assert res.meta["cache"] == {"folder": str(out / "embeddings"), "hits": 0, "misses": 4}
    # 3 protocols x 2 settings x 2 encoders x 4 metrics
    assert len(res) == 48
    frame = res.to_frame()
    assert set(frame["metric"]) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc"}
    lin = res.get("pretrained", "linear", "accuracy", fraction=0.25)
    assert lin["n_train"] == 32 and len(lin["per_seed"]) == 2 and lin["seeds"] == 2
    assert lin["ci_low"] <= lin["mean"] <= lin["ci_high"]
    assert lin["gain"] == pytest.approx(lin["mean"] - res.get("random", "linear", "accuracy", fraction=0.25)["mean"])
    assert lin["gain_low"] <= lin["gain"] <= lin["gain_high"]
    assert res.get("random", "knn", "auroc", fraction=1.0)["gain"] is None
    few = res.get("pretrained", "fewshot", "accuracy", shots=5)
    assert few["n_train"] == 20 and len(few["per_seed"]) == 4  # 2 seeds x 2 episodes
    for r in res:
        assert 0.0 <= r["mean"] <= 1.0
    # files a person reads
    report = json.loads((out / "report.json").read_text())
    assert len(report["records"]) == 48 and report["meta"]["protocols"] == ["linear", "knn", "fewshot"]
    md = (out / "report.md").read_text()
    assert (
        "## linear" in md and "## fewshot" in md and "Gain over **random**" in md and "| pretrained | 25% | 32 |" in md
    )
    for proto in ("linear", "knn", "fewshot"):
        png = out / f"{proto}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        import matplotlib.image

        assert matplotlib.image.imread(png).shape[0] > 200
    # a rerun into the same out is refused unless asked; then it replaces the report, reuses the embeddings
    # and gives the same numbers
    with pytest.raises(ConfigError, match="report.json already exists; pass exist_ok=True"):
        evaluate(ckpt, protocol="knn", out=out)
    again = evaluate(
        ckpt,
        protocol="linear,knn,fewshot",
        fractions=(0.25, 1.0),
        seeds=2,
        out=out,
        n_boot=100,
        shots=(1, 5),
        episodes=2,
        k=5,
        Cs=(0.1, 1.0),
        plots=False,
        exist_ok=True,
    )
    assert again.meta["cache"]["hits"] == 4 and again.meta["cache"]["misses"] == 0
    assert [r["mean"] for r in again] == [r["mean"] for r in res]


def test_finetune_and_lora_protocols(ckpt, tmp_path):
    res = evaluate(
        ckpt,
        protocol="finetune,lora",
        fractions=(1.0,),
        seeds=1,
        out=tmp_path,
        n_boot=50,
        max_train=48,
        max_test=32,
        finetune_kwargs={"steps": 4, "lora_rank": 2},
        plots=False,
    )
    assert {r["protocol"] for r in res} == {"finetune", "lora"}
    lora = res.get("pretrained", "lora", "accuracy", fraction=1.0)
    full = res.get("pretrained", "finetune", "accuracy", fraction=1.0)
    assert lora["trainable_fraction"] < 0.05 and full["trainable_fraction"] == 1.0
    assert lora["n_train"] == 48 and lora["n_test"] == 32 and lora["steps"] == 4
    assert (tmp_path / "report.md").is_file() and not (tmp_path / "lora.png").exists()


def test_card_data_mismatch_is_one_line_checkpoint_error(ckpt):
    with pytest.raises(CheckpointError, match="trained on 1-channel inputs but .* 3-channel images") as e:
        evaluate(ckpt, protocol="knn", overrides=["data.options.channels=3"], n_boot=10)
    assert "\n" not in str(e.value) and str(ckpt) in str(e.value)
    with pytest.raises(CheckpointError, match="takes 2D images but .* 3D ones"):
        evaluate(ckpt, protocol="knn", overrides=["data.options.spatial_dims=3"], n_boot=10)


def test_bad_labels_fractions_and_protocols(ckpt):
    one_class = [make_sample(torch.rand(1, 32, 32), path=f"x{i}.png", label=0) for i in range(12)]
    with pytest.raises(DataError, match="single class"):
        evaluate(ckpt, protocol="knn", datasets=(one_class, one_class), fractions=(1.0,), seeds=1, n_boot=10)
    with pytest.raises(DataError, match="leaves class .* empty"):
        evaluate(ckpt, protocol="linear", fractions=(0.001,), seeds=1, n_boot=10)
    with pytest.raises(ConfigError, match="unknown protocol 'svm'"):
        evaluate(ckpt, protocol="linear,svm")
    with pytest.raises(ConfigError, match="not in \\(0, 1\\]"):
        evaluate(ckpt, protocol="knn", fractions="1,10,100")


def test_online_knn_probe_runs_every_n_steps_and_restores_mode(ckpt):
    from domainfm.synthetic import ShapesDataset

    model = domainfm.load(ckpt)
    enc = model.encoder.train()
    probe = OnlineKNNProbe(
        ShapesDataset(64, size=32, seed=1), ShapesDataset(32, size=32, seed=2), every=10, k=5, batch_size=16
    )
    assert probe(5, enc) == {}
    out = probe(10, enc)
    assert set(out) == {"probe/knn_acc", "probe/knn_balanced_acc"}
    assert 0.0 <= out["probe/knn_acc"] <= 1.0 and enc.training
    assert probe.history == [(10, out)]


def test_cli_helpers_with_second_checkpoint_baseline(ckpt, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    args = parser.parse_args(
        [
            str(ckpt),
            "--protocol",
            "knn",
            "--fractions",
            "0.5,1",
            "--seeds",
            "1",
            "--baseline",
            f"random,{ckpt}",
            "--out",
            str(tmp_path),
            "--n-boot",
            "20",
            "--k",
            "3",
        ]
    )
    res = evaluate_from_args(args)
    assert res.meta["encoders"] == ["pretrained", "random", ckpt.name]
    # the same weights as "pretrained" under another name: identical numbers, zero gain
    a = res.get("pretrained", "knn", "balanced_accuracy", fraction=0.5)
    b = res.get(ckpt.name, "knn", "balanced_accuracy", fraction=0.5)
    assert a["mean"] == b["mean"] and np.isfinite(a["gain"])
    assert "## knn" in capsys.readouterr().out


def test_segmentation_finetune_reports_dice_and_rejects_frozen_protocols(ckpt, tmp_path):
    seg = ["finetune.task=segmentation", "data.options.segmentation=true"]
    res = evaluate(
        ckpt,
        protocol="lora",
        fractions=(0.5,),
        seeds=1,
        n_boot=30,
        max_train=16,
        max_test=8,
        overrides=seg,
        finetune_kwargs={"steps": 2, "lora_rank": 2},
        out=tmp_path,
        plots=False,
    )
    assert res.meta["task"] == "segmentation"
    assert {r["metric"] for r in res} == {"dice", "miou"}
    rec = res.get("pretrained", "lora", "dice", fraction=0.5)
    assert rec["n_train"] == 8 and rec["n_test"] == 8 and 0.0 <= rec["mean"] <= 1.0
    assert "| Dice | mIoU |" in (tmp_path / "report.md").read_text()
    assert res.meta["mean_over"].startswith("classes 1..") and "mean_over" in (tmp_path / "report.md").read_text()
    # label sets without a background class (land cover): class 0 counts in the means
    every = evaluate(
        ckpt,
        protocol="lora",
        fractions=(0.5,),
        seeds=1,
        n_boot=30,
        max_train=16,
        max_test=8,
        overrides=[*seg, "finetune.background=false"],
        finetune_kwargs={"steps": 2, "lora_rank": 2},
        plots=False,
    )
    assert every.meta["mean_over"] == "all classes, 0 included"
    with pytest.raises(ConfigError, match="'knn' needs class labels .* segmentation"):
        evaluate(ckpt, protocol="knn", overrides=seg)


def test_domainfm_cli_evaluate_with_domain_option_flag(ckpt, tmp_path, capsys):
    from domainfm.cli import run

    code = run(
        [
            "evaluate",
            str(ckpt),
            "--protocol",
            "knn",
            "--fractions",
            "1",
            "--seeds",
            "1",
            "--n-boot",
            "20",
            "--out",
            str(tmp_path),
            "--noise",
            "0.3",
        ]
    )  # --noise: a synthetic-domain option
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["meta"]["protocols"] == ["knn"] and len(report["records"]) == 8
    assert "## knn" in capsys.readouterr().out


def test_pool_option_applies_to_every_encoder_without_changing_the_callers_model(tmp_path):
    torch.set_num_threads(1)
    ckpt_cls = domainfm.pretrain(
        {
            "domain": "synthetic",
            "out": str(tmp_path / "cls"),
            "data": {"img_size": 32, "options": {"num_samples": 64}},
            "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2, "class_token": True},
            "train": {"steps": 2, "batch_size": 16, "progress": False, "tensorboard": False, "ckpt_every": 2},
        }
    )
    model = domainfm.load(ckpt_cls)
    x = torch.zeros(2, *model.encoder.img_size).unsqueeze(1).repeat(1, model.encoder.patch_embed.in_chans, 1, 1)
    assert model.embed(x).shape == (2, 32)
    kw = dict(protocol="knn", fractions=(1.0,), seeds=1, n_boot=20, k=3, plots=False)
    res = evaluate(model, out=tmp_path / "cat", pool="token+avg", **kw)
    assert res.meta["pool"] == {"pretrained": "token+avg", "random": "token+avg"}
    assert model.encoder.global_pool == "token" and model.embed(x).shape == (2, 32)  # the caller's model unchanged
    emb = np.load(next((tmp_path / "cat" / "embeddings").glob("*.npz")))
    assert emb[emb.files[0]].shape[1] == 64  # class token and patch mean, concatenated
    plain = evaluate(model, out=tmp_path / "plain", **kw)
    assert plain.meta["pool"] == {"pretrained": "token", "random": "token"}
    with pytest.raises(ConfigError, match="global_pool"):
        evaluate(model, pool="max", **kw)
