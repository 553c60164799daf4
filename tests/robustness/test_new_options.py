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


def test_bad_flat_tolerance_is_one_line_naming_the_key(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "run", train={"steps": 2})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, err = run_cli(["pretrain", path, "--set", "train.flat_tolerance=2"], capsys)
    assert code == 2
    assert_one_line_error(err, "train.flat_tolerance", "[0, 1)")
    assert not (tmp_path / "run").exists()


def test_supervised_baseline_options_and_checkpoint_lists_are_checked_before_training(tmp_path):
    ckpt = domainfm.pretrain(tiny_config(tmp_path / "run", train={"steps": 2}))
    with pytest.raises(ConfigError, match="supervised_kwargs: unknown key epochs .*max_epochs"):
        domainfm.evaluate(
            ckpt,
            protocol="knn",
            fractions=(1.0,),
            seeds=1,
            baseline="supervised",
            supervised_kwargs={"epochs": 3},
            out=tmp_path / "eval",
        )
    assert not (tmp_path / "eval").exists()
    with pytest.raises(ConfigError, match="empty list"):
        domainfm.evaluate([], protocol="knn")


def test_recipe_facts_of_an_unreadable_first_image_name_the_file(tmp_path):
    folder = tmp_path / "xrays"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    with pytest.raises(domainfm.errors.DataError, match="a.png"):
        domainfm.pretrain({"domain": "medical", "out": str(tmp_path / "run"), "data": {"path": str(folder)}})
    assert not (tmp_path / "run").exists()


def test_mixed_modality_folder_is_one_line_naming_the_files_and_writes_nothing(tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    from domainfm.medical.synthetic import make_phantom
    from tests.robustness.conftest import digest

    data = tmp_path / "scans"
    data.mkdir()
    ct, _ = make_phantom((16, 16, 8))
    mri = np.where(ct > -500, 600.0, 0.0).astype(np.float32)
    nib.save(nib.Nifti1Image(ct, np.eye(4)), str(data / "ct_case.nii.gz"))
    nib.save(nib.Nifti1Image(mri, np.eye(4)), str(data / "mr_case.nii.gz"))
    before = digest(data)
    code, err = run_cli(["pretrain", "--domain", "medical", "--data", data, "--out", tmp_path / "run"], capsys)
    assert code != 0
    assert_one_line_error(err, "mixes modalities", "ct_case.nii.gz", "mr_case.nii.gz", "--modality")  # CLI words
    assert digest(data) == before and not (tmp_path / "run" / "checkpoints").exists()


def test_bad_modality_is_one_line_listing_the_choices(tmp_path, capsys):
    code, err = run_cli(
        ["pretrain", "--domain", "medical", "--data", tmp_path, "--modality", "pett", "--out", tmp_path / "run"], capsys
    )
    assert code != 0
    assert_one_line_error(err, "modality", "auto", "pet", "xray")


@pytest.mark.parametrize(
    "domain, flags, key",
    [
        ("medical", ["--percentiles", "99,1"], "percentiles"),
        ("medical", ["--target-spacing", "0,0,0"], "target_spacing"),
        ("medical", ["--crop-size", "100000"], "crop_size"),
        ("remote_sensing", ["--chip-size", "0"], "chip_size"),
        ("remote_sensing", ["--min-valid", "2"], "min_valid"),
        ("pathology", ["--std", "0,0,0"], "std"),
    ],
)
def test_out_of_range_domain_options_are_one_line_naming_the_option(tmp_path, capsys, domain, flags, key):
    data = tmp_path / "data"
    data.mkdir()
    code, err = run_cli(["pretrain", "--domain", domain, "--data", data, "--out", tmp_path / "run", *flags], capsys)
    assert code != 0
    assert_one_line_error(err, key.replace("_", "-"))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.safetensors"))
