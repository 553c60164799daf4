"""``predict`` and ``embed`` flags are checked against what those commands take (the domain's
PredictOptions / EmbedOptions), not against the pretraining options."""

from __future__ import annotations

import warnings

import nibabel as nib
import pytest

import domainfm
from domainfm.cli import main, run
from domainfm.registry import get_domain


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("medical_cli")
    example = get_domain("medical").example(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt = domainfm.pretrain(example.config)
        tuned = domainfm.finetune(ckpt, task=example.task, out=folder / "seg", overrides=example.finetune_overrides)
    return tuned, example, folder, ckpt


def test_predict_takes_its_own_flags(segmenter, tmp_path):
    tuned, example, _, _ = segmenter
    out = tmp_path / "pred.nii.gz"
    assert (
        run(
            [
                "predict",
                str(tuned),
                "--input",
                str(example.predict_input),
                "--out",
                str(out),
                "--save-probabilities",
                "--sw-overlap",
                "0.5",
            ]
        )
        == 0
    )
    assert nib.load(str(out)).shape[:3] == nib.load(str(example.predict_input)).shape[:3]
    assert any(p.name != out.name for p in tmp_path.iterdir())  # the probability map beside the labels


def test_predict_refuses_a_pretraining_option_in_one_line(segmenter, tmp_path, capsys):
    tuned, example, _, _ = segmenter
    with pytest.raises(SystemExit) as info:
        main(
            [
                "predict",
                str(tuned),
                "--input",
                str(example.predict_input),
                "--out",
                str(tmp_path / "p.nii.gz"),
                "--window",
                "bone",
            ]
        )
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.count("\n") == 0
    assert "--window" in err and "--save-probabilities" in err


def test_python_predict_names_python_arguments(segmenter, tmp_path):
    tuned, example, _, _ = segmenter
    with pytest.raises(domainfm.ConfigError, match="unknown key colour"):
        domainfm.predict(tuned, example.predict_input, tmp_path / "p.nii.gz", colour="red")


def test_finetune_config_file_changes_only_the_keys_it_sets(segmenter, tmp_path):
    _, example, _, pretrained = segmenter
    recipe = tmp_path / "seg.yaml"
    recipe.write_text("finetune: {task: segmentation, head_options: {feature_size: 4}}\ntrain: {steps: 1}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuned = domainfm.finetune(pretrained, config=recipe, out=tmp_path / "ft")
    card = domainfm.load(tuned).card
    assert card["domain"] == "medical" and card["config"]["train"]["steps"] == 1
    assert card["config"]["data"]["options"]["window"] == "soft_tissue"  # the pretraining recipe's, kept
