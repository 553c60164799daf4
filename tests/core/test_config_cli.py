"""Config validation and the CLI: clear one-line errors, info, list, finetune/embed/predict wiring."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import domainfm
from domainfm.cli import main, run
from domainfm.errors import ConfigError
from domainfm.runconfig import load_config
from tests.conftest import tiny_config
from tests.helpers import TINY_MODEL_FLAGS


def _cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "domainfm.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_config_errors_name_the_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: synthetic\ntrain:\n  stepz: 10\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key train.stepz \(did you mean train.steps\?"):
        load_config(bad)
    bad.write_text("domain: synthetic\ntrain:\n  steps: ten\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train.steps must be an integer, got 'ten'"):
        load_config(bad)
    bad.write_text("domain: medical\ndata:\n  path: /no/such/folder\n")
    with pytest.raises(ConfigError, match=r"data.path /no/such/folder does not exist"):
        load_config(bad)
    bad.write_text("domain: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown domain 'ultrasound'"):
        load_config({"domain": "ultrasound"})
    with pytest.raises(ConfigError, match="unknown key data.options.colour"):
        load_config({"domain": "synthetic", "data": {"options": {"colour": 1}}})
    cfg = load_config({"domain": "synthetic"}, overrides=["train.steps=7", "objective.mask_ratio=0.5"])
    assert cfg.train.steps == 7 and cfg.objective.mask_ratio == 0.5


@pytest.mark.parametrize(
    "args,message",
    [
        (["pretrain", "--domain", "synthetic", "--set", "train.stepz=3"], "unknown key train.stepz"),
        (["pretrain", "--domain", "synthetic", "--colour", "red"], "unknown option --colour for domain 'synthetic'"),
        (["pretrain", "missing.yaml"], "config file missing.yaml does not exist"),
        (["info", "/no/such/run"], "/no/such/run: no such checkpoint"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_cli_process_prints_one_line_and_no_traceback():
    proc = _cli("pretrain", "--domain", "synthetic", "--set", "train.steps=zero")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: command line: train.steps must be an integer, got 'zero'"


def test_cli_pretrain_info_finetune_embed(tmp_path, capsys):
    run(
        [
            "pretrain",
            "--domain",
            "synthetic",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / "pt"),
            "--num-samples",
            "32",
            *TINY_MODEL_FLAGS,
        ]
    )
    capsys.readouterr()
    with pytest.raises(SystemExit):  # an operation the domain does not offer: one line, no traceback
        main(["predict", str(tmp_path / "pt"), "--input", "x.png", "--out", "y.png", "--overlap", "0.5"])
    err = capsys.readouterr().err.strip()  # said before its flags are looked at, with what to use instead
    assert err.startswith("error: domain 'synthetic' does not offer predict; use `domainfm embed CHECKPOINT")
    assert "\n" not in err and "overlap" not in err
    with pytest.raises(SystemExit):
        main(["finetune", str(tmp_path / "pt"), "--task", "segmentation", "--steps", "1", "--out", str(tmp_path / "x")])
    assert "the segmentation task needs a 'mask' for every sample" in capsys.readouterr().err
    run(["info", str(tmp_path / "pt")])
    card = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert card["domain"] == "synthetic" and card["step"] == 2
    run(["finetune", str(tmp_path / "pt"), "--task", "classification", "--steps", "2", "--out", str(tmp_path / "ft")])
    model = domainfm.load(tmp_path / "ft")
    assert model.card["task"] == "classification" and model.card["num_classes"] == 4
    assert model.logits(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    assert "accuracy" in model.card["val_metrics"]
    run(["embed", str(tmp_path / "pt"), "--data", str(tmp_path), "--out", str(tmp_path / "emb.npz")])
    arrays = np.load(tmp_path / "emb.npz")
    assert arrays["embeddings"].shape[1] == 32 and len(arrays["labels"]) == len(arrays["embeddings"])


def test_finetune_segmentation_and_frozen_encoder(tmp_path):
    pt = domainfm.pretrain(tiny_config(tmp_path / "pt", data={"options": {"num_samples": 32, "segmentation": True}}))
    ft = domainfm.finetune(
        pt, task="segmentation", overrides=["train.steps=2", "finetune.freeze_encoder=true"], out=tmp_path / "seg"
    )
    model = domainfm.load(ft)
    assert model.logits(torch.randn(2, 1, 32, 32)).shape == (2, 5, 32, 32)
    assert set(model.card["val_metrics"]) == {"dice", "miou"}
    before, after = domainfm.load(pt).encoder.state_dict(), model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cli_list(capsys):
    run(["list"])
    listing = json.loads(capsys.readouterr().out)
    assert "vit-base" in listing["encoders"] and "mae+contrastive" in listing["objectives"]
    assert {"synthetic", "medical", "remote_sensing", "pathology"} <= set(listing["domains"])
    assert (
        "--target-mpp" in listing["domain_flags"]["pathology"]
        and "--bands" in listing["domain_flags"]["remote_sensing"]
    )


def test_finetune_uses_layer_decay_and_a_config_file(tmp_path):
    pt = domainfm.pretrain(tiny_config(tmp_path / "pt"))
    ft_yaml = tmp_path / "ft.yaml"
    ft_yaml.write_text("finetune:\n  task: classification\n  layer_decay: 0.5\ntrain:\n  steps: 2\n  lr: 1.0e-3\n")
    run(["finetune", str(pt), "--config", str(ft_yaml), "--out", str(tmp_path / "ft")])
    model = domainfm.load(tmp_path / "ft")
    assert model.card["config"]["finetune"]["layer_decay"] == 0.5 and model.card["task"] == "classification"
    state = json.loads((model.path / "trainer_state.json").read_text())
    scales = sorted({round(g["lr_scale"], 6) for g in state["optimizer"]["param_groups"]})
    # patch embed 0.5^3, block 0 0.5^2, block 1 0.5, final norm and head 1.0 (depth 2)
    assert scales == [0.125, 0.25, 0.5, 1.0]


def test_every_shipped_config_validates():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2] / "configs"
    folders = {
        "quickstart": "synthetic",
        "medical": "medical",
        "remote_sensing": "remote_sensing",
        "pathology": "pathology",
        "objectives": "synthetic",  # objective-only presets: every other section at its default
    }
    checked = 0
    for path in sorted(root.glob("*/*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if "sensors" in raw:  # a sensor table for remote sensing, not a run config
            continue
        raw.setdefault("domain", folders[path.parent.name])  # fine-tune recipes inherit the checkpoint's domain
        load_config(raw, check_paths=False)
        checked += 1
    assert checked >= 10


def test_embed_rejects_options_it_does_not_take(tmp_path, capsys):
    pt = domainfm.pretrain(tiny_config(tmp_path / "pt"))
    with pytest.raises(SystemExit):
        main(["embed", str(pt), "--data", str(tmp_path), "--out", str(tmp_path / "e.npz"), "--noise", "0.3"])
    assert "embed takes the preprocessing from the checkpoint card; it does not take --noise" in capsys.readouterr().err
    run(["embed", str(pt), "--data", str(tmp_path), "--out", str(tmp_path / "e.npz"), "--batch-size", "4"])
    assert np.load(tmp_path / "e.npz")["embeddings"].shape[1] == 64


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--lr", "nan"], "train.lr must be a number >= 0, got nan"),
        (["--workers", "-1"], "data.num_workers must be >= 0, got -1"),
        (["--set", "data.img_size=0"], "must be positive"),
        (["--objective", "contrastive", "--batch-size", "1"], "contrastive needs train.batch_size >= 2"),
        (["--device", "foo"], "train.device 'foo' is not a device"),
        (["--channels", "0"], "synthetic data needs channels >= 1"),
    ],
)
def test_values_that_would_fail_inside_torch_are_config_errors(tmp_path, flags, message, capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--domain", "synthetic", "--steps", "1", "--out", str(tmp_path / "r"), *flags])
    assert message in capsys.readouterr().err
