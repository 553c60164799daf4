"""Class counts checked against the labels, synthetic data that would ignore --data, damaged cards."""

from __future__ import annotations

import pytest
import torch

import domainfm
from domainfm.classmap import ClassMap, resolve_classes
from domainfm.errors import ConfigError, DataError
from tests.conftest import tiny_config
from tests.robustness.conftest import assert_one_line_error, digest, run_cli


def _masks(*values):
    return [{"mask": torch.tensor(v)} for v in values]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 2}, r"finetune.num_classes=2 disagrees .* \[0, 1, 5\]"),
        ({"names": ["bg", "a"]}, r"data.options.classes names 2 classes \['bg', 'a'\] .* \[0, 1, 5\]"),
    ],
)
def test_segmentation_class_count_disagreement_shows_both(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        resolve_classes(_masks([0, 1], [5, 0]), "segmentation", where="m.csv", **kwargs)


def test_declared_num_classes_covering_the_ids_is_kept():
    n, names, cm = resolve_classes(_masks([0, 1], [2, 0]), "segmentation", num_classes=4)
    assert n == 4 and cm.is_identity and names[0] == "background"


def test_classification_labels_beyond_num_classes_are_refused():
    ds = [{"label": 0}, {"label": 3}]
    with pytest.raises(ConfigError, match="finetune.num_classes=2 disagrees"):
        resolve_classes(ds, "classification", num_classes=2, where="d")


def test_unknown_id_at_training_is_named():
    with pytest.raises(DataError, match="label value 7 is not one of the training classes"):
        ClassMap([0, 1, 8]).to_index(torch.tensor([0, 7]), "scan.nii.gz")


def test_synthetic_checkpoint_with_data_is_refused(tmp_path, capsys):
    ckpt = domainfm.pretrain(tiny_config(tmp_path / "pre", train={"steps": 1}))
    before = digest(ckpt)
    code, err = run_cli(["finetune", ckpt, "--data", tmp_path, "--out", tmp_path / "ft", "--steps", "1"], capsys)
    assert code == 2
    assert_one_line_error(err, str(tmp_path), "synthetic")
    assert digest(ckpt) == before


def test_damaged_card_is_one_line(tmp_path, capsys):
    ckpt = domainfm.pretrain(tiny_config(tmp_path / "pre", train={"steps": 1}))
    (ckpt / "card.json").write_text("{not json")
    code, err = run_cli(["info", ckpt], capsys)
    assert code == 2
    assert_one_line_error(err, "card.json")


def test_data_held_in_memory_is_named_in_words_never_as_none(caplog):
    ds = [{"label": 0}, {"label": 2}]  # class 1 has no training sample; the data has no path
    with caplog.at_level("WARNING", logger="domainfm"):
        resolve_classes(ds, "classification")
    assert [r.getMessage() for r in caplog.records] == ["the training data: classes [1] have no training sample"]
    with pytest.raises(ConfigError, match="^finetune.num_classes=2 disagrees with the labels of the training data"):
        resolve_classes(ds, "classification", num_classes=2)
