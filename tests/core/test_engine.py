"""The engine: exact resume, atomic checkpoints, non-finite loss, EMA, accumulation, round trips."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import domainfm
from domainfm.errors import CheckpointError, NonFiniteLossError
from domainfm.train.checkpoint import list_checkpoints, load_card, resolve_checkpoint
from tests.conftest import tiny_config
from tests.helpers import TINY_MODEL_FLAGS


def _weights(ckpt):
    return load_file(str(Path(ckpt) / "model.safetensors"))


class Crash(Exception):
    pass


@pytest.mark.parametrize("objective", ["mae", "mae+contrastive"])
def test_resume_equals_uninterrupted_run(tmp_path, objective):
    train = {"steps": 6, "ckpt_every": 3, "batch_size": 8}
    full = domainfm.pretrain(tiny_config(tmp_path / "full", train=train, objective={"name": objective}))

    def crash_at_4(step, encoder):
        if step == 4:
            raise Crash("simulated crash after step 4")
        return {}

    cfg = tiny_config(tmp_path / "crashed", train=train, objective={"name": objective})
    with pytest.raises(Crash):
        domainfm.pretrain(cfg, callbacks=[crash_at_4])
    assert [p.name for p in list_checkpoints(tmp_path / "crashed")] == ["ckpt-0000003"]
    resumed = domainfm.pretrain(cfg, resume=True)
    assert resumed.name == full.name == "ckpt-0000006"
    a, b = _weights(full), _weights(resumed)
    rows = (tmp_path / "crashed" / "metrics.csv").read_text().splitlines()[1:]
    keys = [tuple(r.split(",")[:2]) for r in rows]
    assert len(keys) == len(set(keys)) and max(int(k[0]) for k in keys) == 6  # step 4 logged once, not twice
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_checkpoint_is_atomic_self_describing_and_pickle_free(tmp_path):
    ckpt = domainfm.pretrain(tiny_config(tmp_path / "run", train={"steps": 2, "ckpt_every": 1, "keep_last": 1}))
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-0000002"]
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp")]
    assert resolve_checkpoint(run) == ckpt
    card = load_card(run)
    assert card["domain"] == "synthetic" and card["step"] == 2 and card["encoder"]["embed_dim"] == 64
    assert card["versions"]["torch"] and card["preprocessing"]["channels"] == 1
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "card.json",
        "model.safetensors",
        "trainer_state.json",
        "trainer_state.safetensors",
    ]
    assert (run / "reconstruction.png").stat().st_size > 100
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,metric,value" and any(",effective_rank," in r for r in rows)


def test_load_round_trip_gives_same_embeddings(tmp_path):
    ckpt = domainfm.pretrain(tiny_config(tmp_path / "run"))
    a, b = domainfm.load(ckpt), domainfm.load(tmp_path / "run")
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(a.embed(x), b.embed(x))
    w = _weights(ckpt)
    assert torch.equal(a.encoder.blocks[0].attn.qkv.weight, w["encoder.blocks.0.attn.qkv.weight"])


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path / "run", train={"steps": 6, "ckpt_every": 2})

    def poison(step, encoder):
        if step == 3:
            with torch.no_grad():
                encoder.blocks[0].attn.qkv.weight.fill_(float("nan"))
        return {}

    with pytest.raises(NonFiniteLossError, match=r"at step 4; the last good checkpoint is .*ckpt-0000002"):
        domainfm.pretrain(cfg, callbacks=[poison])
    good = domainfm.load(tmp_path / "run")
    assert torch.isfinite(good.embed(torch.randn(1, 1, 32, 32))).all()


def test_ema_and_accumulation(tmp_path):
    ckpt = domainfm.pretrain(tiny_config(tmp_path / "run", train={"steps": 3, "ema": 0.5, "accum_steps": 2}))
    w = _weights(ckpt)
    assert any(k.startswith("ema.encoder.") for k in w)
    assert load_card(ckpt)["ema"] is True
    model = domainfm.load(ckpt)
    assert torch.equal(model.encoder.blocks[0].mlp.fc1.weight, w["ema.encoder.blocks.0.mlp.fc1.weight"])


def test_resume_on_an_empty_folder_starts_fresh(tmp_path):
    ckpt = domainfm.pretrain(tiny_config(tmp_path / "empty", train={"steps": 2}), resume=True)
    assert load_card(ckpt)["step"] == 2


def test_load_rejects_non_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        domainfm.load(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "card.json").write_text(json.dumps({"format": "domainfm-checkpoint/1"}))
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        domainfm.load(bad)


def test_online_knn_probe_logged_next_to_collapse_monitor(tmp_path):
    domainfm.pretrain(tiny_config(tmp_path / "run", train={"steps": 2, "probe_every": 2}))
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    probe_rows = [r for r in rows if r.startswith("2,probe/")]
    assert probe_rows, rows
    acc = [float(r.split(",")[2]) for r in probe_rows if "acc" in r]
    assert acc and all(0.0 <= a <= 1.0 for a in acc)
    assert any(",embed_std," in r for r in rows)


def test_nan_input_is_named_by_its_file(tmp_path, monkeypatch):
    from domainfm.errors import DataError
    from domainfm.synthetic import ShapesDataset

    original = ShapesDataset.__getitem__

    def poisoned(self, index):
        sample = original(self, index)
        if index == 5:
            sample["image"][0, 0, 0] = float("nan")
        return sample

    monkeypatch.setattr(ShapesDataset, "__getitem__", poisoned)
    with pytest.raises(DataError, match=r"shapes://\d+/5: input has 1 NaN/inf values"):
        domainfm.pretrain(tiny_config(tmp_path / "run", train={"steps": 8, "batch_size": 8}))


def test_cli_resume_reads_the_run_config_and_refuses_a_different_model(tmp_path, capsys):
    from domainfm.cli import main, run

    out = str(tmp_path / "run")
    base = [
        "--domain",
        "synthetic",
        "--out",
        out,
        "--num-samples",
        "32",
        "--batch-size",
        "8",
        *TINY_MODEL_FLAGS,
    ]
    run(["pretrain", *base, "--steps", "2"])
    run(["pretrain", "--resume", "--out", out, "--steps", "3"])  # model flags come from the run's config.yaml
    assert load_card(tmp_path / "run")["step"] == 3
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["pretrain", *base, "--steps", "4", "--resume", "--set", "model.patch_size=16"])
    err = capsys.readouterr().err
    assert "--resume with a different setup than the run (model.patch_size: 8 in the run, 16 now)" in err


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    from domainfm.errors import ConfigError

    first = domainfm.pretrain(tiny_config(tmp_path / "run"))
    before = _weights(first)
    with pytest.raises(ConfigError, match="already holds checkpoints .*nothing was overwritten"):
        domainfm.pretrain(tiny_config(tmp_path / "run", train={"seed": 1}))
    after = _weights(first)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "seed: 0" in (tmp_path / "run" / "config.yaml").read_text()  # the run's config is kept too


def test_demo_replaces_its_own_folder_but_never_a_users(tmp_path):
    from domainfm.errors import ConfigError

    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not empty and was not written by a demo"):
        domainfm.demo("synthetic", user, quick=True)
    assert (user / "notes.txt").read_text() == "precious"
