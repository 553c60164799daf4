"""The typed card: one builder, one reader, old cards still load, a plugin's sections survive, and a fine-tuned
checkpoint's card is complete when first written (no rewrite after saving)."""

from __future__ import annotations

import json

import pytest
import torch

import domainfm
from domainfm import pipelines
from domainfm.card import FORMAT, SCHEMA_VERSION, Card
from domainfm.errors import CheckpointError


def _pretrain(out) -> object:
    torch.set_num_threads(1)
    return domainfm.pretrain(
        {
            "domain": "synthetic",
            "out": str(out),
            "data": {"img_size": 16, "options": {"num_samples": 16}},
            "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
            "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False},
        }
    )


#: a card as written before ``schema_version`` (and before recipes, class maps, learning and compute records)
OLD_CARD = {
    "domain": "synthetic",
    "stage": "pretrain",
    "objective": {"name": "mae", "mask_ratio": 0.75},
    "preprocessing": {"spatial_dims": 2, "channels": 1},
    "data": {"path": None, "num_samples": 16},
    "task": None,
    "num_classes": None,
    "classes": None,
    "format": FORMAT,
    "step": 2,
    "ema": False,
    "mil": {"default": "abmil"},  # a plugin's own section
}


def test_round_trip_keeps_every_section_and_a_plugins_own():
    card = Card(domain="synthetic", stage="pretrain", preprocessing={"spatial_dims": 2}, extra={"mil": {"k": [1, 2]}})
    again = Card.from_json(card.to_json())
    assert again == card
    assert again.to_dict() == card.to_dict()
    assert again["mil"] == {"k": [1, 2]} and again.extra == {"mil": {"k": [1, 2]}}
    assert Card.from_dict(card.to_dict()) == card
    assert json.loads(card.to_json())["schema_version"] == SCHEMA_VERSION


def test_the_card_reads_as_a_mapping_for_plugins():
    card = Card(domain="medical", preprocessing={"spacing": [1, 1, 1]}, task=None)
    assert card["preprocessing"]["spacing"] == [1, 1, 1] and card.get("preprocessing") is card.preprocessing
    assert "preprocessing" in card and "task" not in card and "mil" not in card
    assert card["task"] is None and card.get("task", "none") == "none" and card.get("mil") is None
    assert card.get("encoder", {}).get("in_chans") is None  # an unset section gives the default
    card["learning"] = {"verdict": "learning"}  # the engine writes its records by key
    card["mil"] = {"default": "abmil"}
    assert card.learning == {"verdict": "learning"} and card.extra == {"mil": {"default": "abmil"}}
    plain = {**card, "ema": True}  # how the engine hands the card to save_checkpoint
    assert plain["learning"] == {"verdict": "learning"} and plain["mil"] == {"default": "abmil"}
    assert "versions" not in plain  # so save_checkpoint's setdefault still records them
    assert set(card.keys()) == {"domain", "preprocessing", "learning", "schema_version", "mil"}
    del card["mil"]
    assert "mil" not in card
    assert card.setdefault("versions", {"torch": "x"}) == {"torch": "x"} and card.versions == {"torch": "x"}
    assert card.pop("versions") == {"torch": "x"} and card.pop("versions", None) is None and "versions" not in card
    with pytest.raises(KeyError):
        card["nothing"]


def test_an_old_card_without_schema_version_still_loads(tmp_path):
    ckpt = _pretrain(tmp_path / "run")
    now = json.loads((ckpt / "card.json").read_text())
    old = {**OLD_CARD, "encoder": now["encoder"], "config": now["config"], "weights_sha256": now["weights_sha256"]}
    (ckpt / "card.json").write_text(json.dumps(old))
    card = Card.read(ckpt)
    assert card.schema_version == 1 and card.recipe is None and card.class_map is None
    assert card.extra == {"mil": {"default": "abmil"}}
    model = domainfm.load(ckpt)
    assert model.card.schema_version == 1 and model.card["mil"] == {"default": "abmil"}
    assert model.embed(torch.rand(2, 1, 16, 16)).shape == (2, 32)


def test_the_one_reader_says_what_is_wrong_in_one_line(tmp_path):
    (tmp_path / "card.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Card.read(tmp_path)
    (tmp_path / "card.json").write_text('{"format": "other/1"}')
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        Card.read(tmp_path / "card.json")
    (tmp_path / "card.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        Card.read(tmp_path)


def test_pretrain_and_finetune_cards_come_from_the_one_builder_and_are_complete_when_first_written(
    tmp_path, monkeypatch
):
    ckpt = _pretrain(tmp_path / "run")
    base = Card.read(ckpt)
    assert base.schema_version == SCHEMA_VERSION and base.stage == "pretrain" and base.recipe is not None
    assert base.learning is not None and base.compute is not None and base.versions  # the engine's records
    rewrites = []
    real = pipelines.write_json_atomic
    monkeypatch.setattr(pipelines, "write_json_atomic", lambda path, obj: rewrites.append(path) or real(path, obj))
    tuned = domainfm.finetune(ckpt, task="classification", out=tmp_path / "ft", overrides=["train.steps=2"])
    assert rewrites == []  # the card was complete when the checkpoint was written
    card = Card.read(tuned)
    assert card.stage == "finetune" and card.parent == str(ckpt) and card.task == "classification"
    assert card.schema_version == SCHEMA_VERSION and card.num_classes == 4
    assert card.recipe == base.recipe and card.objective == base.objective  # carried from the base card
    assert card.val_metrics == json.loads((tmp_path / "ft" / "val_metrics.json").read_text())
    assert set(card.val_metrics) >= {"accuracy", "balanced_accuracy"}
    assert domainfm.load(tuned).card.val_metrics == card.val_metrics
    before = (tuned / "card.json").read_bytes()
    again = domainfm.finetune(
        ckpt, task="classification", out=tmp_path / "ft", overrides=["train.steps=2"], resume=True
    )
    assert again == tuned and (tuned / "card.json").read_bytes() == before
    assert rewrites == []  # a finished run resumed: its checkpoint's card is not written again
