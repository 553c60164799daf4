"""Importing timm / MAE / DINOv2 / TorchGeo-style ViT weights: token equality, formats, channels, 3D, safety."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import domainfm
from domainfm.cli import main as cli_main
from domainfm.cli import run as cli_run
from domainfm.errors import CheckpointError, ConfigError, DataError
from domainfm.models.pos_embed import resample_pos_embed
from domainfm.weights import import_weights

TOL = 1e-4


def _timm(name: str, seed: int = 0, **kw) -> torch.nn.Module:
    """A timm ViT with random (not near-zero) weights, depth 1 unless told."""
    torch.manual_seed(seed)
    kw.setdefault("depth", 1)
    vit = timm.create_model(name, pretrained=False, **kw).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0, 0.05)  # layer-scale gammas, class/register tokens and norms all away from their init
    return vit


def _ref_tokens(vit, x):
    with torch.no_grad():
        return vit.forward_features(x)[:, vit.num_prefix_tokens :]


def _state(vit) -> dict:
    return {k: v.detach().contiguous().clone() for k, v in vit.state_dict().items()}


def _save(fmt: str, sd: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        save_file(sd, str(folder / "w.safetensors"))
        return folder / "w.safetensors"
    if fmt == "pth":
        torch.save(sd, folder / "w.pth")
        return folder / "w.pth"
    if fmt == "pth-nested":  # a training checkpoint: optimizer-free dict, DDP prefix, extra scalars
        torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in sd.items()}}, folder / "w.pt")
        return folder / "w.pt"
    if fmt == "hf-safetensors":
        save_file(sd, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"num_classes": 0}))
        return folder
    if fmt == "hf-bin":
        torch.save(sd, folder / "pytorch_model.bin")
        (folder / "config.json").write_text(json.dumps({"num_classes": 0}))
        return folder
    raise AssertionError(fmt)


MODELS = {
    "vit_small_patch16_224": dict(img_size=32),
    "vit_small_patch14_reg4_dinov2": dict(img_size=28),
    "layer_scale_avg": dict(img_size=32, init_values=0.1, class_token=False, global_pool="avg", fc_norm=False),
}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth-nested", "hf-safetensors", "hf-bin"])
def test_patch_tokens_equal_timm(tmp_path, model, fmt):
    kw = dict(MODELS[model])
    vit = _timm("vit_small_patch16_224" if model == "layer_scale_avg" else model, **kw)
    src = _save(fmt, _state(vit), tmp_path / "src")
    ckpt = import_weights(src, domain="synthetic", out=tmp_path / "ckpt", channels=3)
    m = domainfm.load(ckpt)
    x = torch.randn(2, 3, kw["img_size"], kw["img_size"])
    with torch.no_grad():
        feats = m.features(x)
        pooled = vit.forward_head(vit.forward_features(x), pre_logits=True)
    assert feats["tokens"].shape == (2, (kw["img_size"] // vit.patch_embed.patch_size[0]) ** 2, 384)
    assert (feats["tokens"] - _ref_tokens(vit, x)).abs().max() < TOL
    assert (m.embed(x) - pooled).abs().max() < TOL  # pooled the way the source pools
    card = json.loads((ckpt / "card.json").read_text())
    imp = card["import"]
    assert imp["layout"] == "timm-vit" and len(imp["sha256"]) == 64
    assert imp["detected"]["num_registers"] == (4 if "reg4" in model else 0)
    assert imp["detected"]["layer_scale"] == ("dinov2" in model or model == "layer_scale_avg")
    assert [c["rule"] for c in imp["channels"]] == ["copied"] * 3


def _official_dinov2(vit, chunked: bool) -> dict:
    """timm's DINOv2-with-registers state dict written back in the official (facebookresearch) key layout."""
    sd = _state(vit)
    pos_cls = torch.randn(1, 1, sd["cls_token"].shape[-1]) * 0.05
    out = {
        "cls_token": sd.pop("cls_token") - pos_cls,
        "register_tokens": sd.pop("reg_token"),
        "pos_embed": torch.cat([pos_cls, sd.pop("pos_embed")], dim=1),
        "mask_token": torch.zeros(1, sd["norm.weight"].shape[0]),
    }
    for k, v in sd.items():
        out[k.replace("blocks.", "blocks.0.", 1) if chunked and k.startswith("blocks.") else k] = v
    return out


@pytest.mark.parametrize("chunked", [False, True])
def test_official_dinov2_layout(tmp_path, chunked):
    vit = _timm("vit_small_patch14_reg4_dinov2", img_size=28, depth=2)
    torch.save(
        {"teacher": {f"backbone.{k}": v for k, v in _official_dinov2(vit, chunked).items()}}, tmp_path / "dinov2.pth"
    )
    ckpt = import_weights(tmp_path / "dinov2.pth", domain="synthetic", out=tmp_path / "ckpt", channels=3)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        got = domainfm.load(ckpt).features(x)["tokens"]
    assert (got - _ref_tokens(vit, x)).abs().max() < TOL
    imp = json.loads((ckpt / "card.json").read_text())["import"]
    assert imp["layout"] == "dinov2" and imp["nested_under"] == "teacher" and imp["prefix"] == "backbone."
    assert "mask_token" in imp["dropped_keys"]


def test_official_mae_layout_and_arch_override(tmp_path):
    vit = _timm("vit_small_patch16_224", img_size=32)
    sd = _state(vit)
    sd.update(
        {
            "mask_token": torch.zeros(1, 1, 64),
            "decoder_embed.weight": torch.zeros(64, 384),
            "decoder_pos_embed": torch.zeros(1, 5, 64),
            "decoder_blocks.0.norm1.weight": torch.ones(64),
            "decoder_pred.weight": torch.zeros(768, 64),
        }
    )
    torch.save({"model": sd}, tmp_path / "mae.pth")
    ckpt = import_weights(
        tmp_path / "mae.pth",
        domain="synthetic",
        out=tmp_path / "ckpt",
        arch="vit_small_patch16_224",
        img_size=32,
        channels=3,
    )
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (domainfm.load(ckpt).features(x)["tokens"] - _ref_tokens(vit, x)).abs().max() < TOL
    imp = json.loads((ckpt / "card.json").read_text())["import"]
    assert imp["layout"] == "mae"
    assert sorted(imp["dropped_keys"]) == sorted(
        [
            "mask_token",
            "decoder_embed.weight",
            "decoder_pos_embed",
            "decoder_blocks.0.norm1.weight",
            "decoder_pred.weight",
            "head.weight",
            "head.bias",
        ]
    )
    assert imp["detected"]["num_heads_from"] == "timm arch vit_small_patch16_224"
    assert imp["pos_embed"] == "learned [2, 2] -> [2, 2]"
    # another image size: the learned positions are resampled (bicubic) to the new grid, the class position folded
    big = domainfm.load(
        import_weights(tmp_path / "mae.pth", domain="synthetic", out=tmp_path / "big", img_size=64, channels=3)
    )
    assert big.encoder.grid == (4, 4) and big.card["import"]["pos_embed"] == "learned [2, 2] -> [4, 4] (bicubic)"
    expected = resample_pos_embed(sd["pos_embed"][0, 1:], (2, 2), (4, 4))
    assert torch.allclose(big.encoder.pos_embed[0], expected, atol=1e-6)
    assert torch.allclose(big.encoder.cls_token, sd["cls_token"] + sd["pos_embed"][:, :1], atol=1e-6)


def test_torchgeo_style_13_bands_mapped_by_name(tmp_path):
    bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    vit = _timm("vit_small_patch16_224", img_size=32, in_chans=13)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in _state(vit).items()}}, tmp_path / "ssl4eo.pth")
    ckpt = import_weights(
        tmp_path / "ssl4eo.pth",
        domain="remote_sensing",
        out=tmp_path / "ckpt",
        source_bands=",".join(bands),
        patch_embed="2d",
        img_size=32,
        bands="B04,B03,B02,B8A",
    )
    m = domainfm.load(ckpt)
    x = torch.randn(2, 4, 32, 32)
    full = torch.zeros(2, 13, 32, 32)
    for i, b in enumerate(["B04", "B03", "B02", "B8A"]):
        full[:, bands.index(b)] = x[:, i]
    with torch.no_grad():
        assert (m.features(x)["tokens"] - _ref_tokens(vit, full)).abs().max() < TOL
    imp = m.card["import"]
    assert [c["rule"] for c in imp["channels"]] == ["copied"] * 4
    assert imp["source_channels"] == bands


def test_grey_from_rgb_sum_and_unmatched_channels(tmp_path):
    vit = _timm("vit_small_patch16_224", img_size=32)
    save_file(_state(vit), str(tmp_path / "w.safetensors"))
    grey = domainfm.load(import_weights(tmp_path / "w.safetensors", domain="synthetic", out=tmp_path / "g"))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert (grey.features(x)["tokens"] - _ref_tokens(vit, x.expand(-1, 3, -1, -1))).abs().max() < TOL
    assert grey.card["import"]["channels"][0]["rule"] == "sum of red+green+blue"
    four = import_weights(
        tmp_path / "w.safetensors",
        domain="synthetic",
        out=tmp_path / "f",
        channels=4,
        target_bands="blue,green,red,nir",
    )
    rules = [c["rule"] for c in json.loads((four / "card.json").read_text())["import"]["channels"]]
    assert rules == ["copied", "copied", "copied", "mean of source kernels"]
    # `info` lists what was copied and what was initialised
    assert cli_run(["info", str(four)]) == 0


def test_wavelength_embed_reproduces_rgb_tokens(tmp_path):
    vit = _timm("vit_small_patch16_224", img_size=32)
    save_file(_state(vit), str(tmp_path / "w.safetensors"))
    ckpt = import_weights(
        tmp_path / "w.safetensors",
        domain="synthetic",
        out=tmp_path / "ckpt",
        wavelengths=[0.665, 0.56, 0.49],
        channels=3,
    )
    m = domainfm.load(ckpt)
    assert m.card["encoder"]["patch_embed"] == "wavelength"
    x = torch.randn(2, 3, 32, 32)
    ref = _ref_tokens(vit, x)
    with torch.no_grad():
        same = m.features(x, wavelengths=[0.665, 0.56, 0.49])["tokens"]
        flipped = m.features(x.flip(1), wavelengths=[0.49, 0.56, 0.665])["tokens"]  # band order does not matter
        nir = m.features(torch.randn(2, 4, 32, 32), wavelengths=[0.49, 0.56, 0.665, 0.842])["tokens"]
    assert (same - ref).abs().max() < TOL and (flipped - ref).abs().max() < TOL
    assert torch.isfinite(nir).all() and nir.shape == ref.shape


def _inflated_error(tmp_path, vit, name):
    save_file(_state(vit), str(tmp_path / f"{name}.safetensors"))
    ckpt = import_weights(
        tmp_path / f"{name}.safetensors", domain="synthetic", out=tmp_path / name, spatial_dims=3, patch_depth=4
    )
    m = domainfm.load(ckpt)
    assert m.card["encoder"]["patch_size"] == [4, 16, 16] and m.encoder.grid == (8, 2, 2)
    assert "repeated along depth" in m.card["import"]["pos_embed"]
    sl = torch.randn(2, 1, 32, 32)
    vol = sl[:, :, None].expand(-1, -1, 32, -1, -1).contiguous()
    with torch.no_grad():
        tokens = m.features(vol)["tokens"].reshape(2, 8, 4, 384)
    return (tokens - _ref_tokens(vit, sl.expand(-1, 3, -1, -1))[:, None]).abs().max().item()


def test_inflation_to_3d_constant_volume_gives_2d_tokens(tmp_path):
    # without prefix tokens every key is repeated along depth, so attention (and every token) is unchanged
    no_prefix = _timm(
        "vit_small_patch16_224", img_size=32, class_token=False, global_pool="avg", fc_norm=False, init_values=0.1
    )
    assert _inflated_error(tmp_path, no_prefix, "avg") < TOL
    # a class token is not repeated: it gets 1/8 of its 2D attention share here, a small measured deviation
    with_cls = _timm("vit_small_patch16_224", img_size=32)
    assert TOL < _inflated_error(tmp_path, with_cls, "cls") < 0.05


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_with_objects_is_refused_and_never_executed(tmp_path, writer):
    marker = tmp_path / "marker.txt"
    payload = {"model": {"patch_embed.proj.weight": _Evil(str(marker)), "cls_token": torch.zeros(1, 1, 8)}}
    if writer == "pickle":
        with open(tmp_path / "evil.pth", "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil.pth: refused: it is not a plain tensor file .*never unpickled"):
        import_weights(tmp_path / "evil.pth", domain="synthetic", out=tmp_path / "ckpt")
    assert not marker.exists() and not (tmp_path / "ckpt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["evil.pth"]


def test_unknown_layout_is_one_line_and_writes_nothing(tmp_path, capsys):
    save_file(
        {"features.0.weight": torch.zeros(8, 3, 3, 3), "classifier.weight": torch.zeros(2, 8)},
        str(tmp_path / "cnn.safetensors"),
    )
    code = None
    with pytest.raises(SystemExit) as exc:
        from domainfm.cli import main

        main(
            [
                "import-weights",
                str(tmp_path / "cnn.safetensors"),
                "--domain",
                "synthetic",
                "--out",
                str(tmp_path / "ckpt"),
            ]
        )
    code = exc.value.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "unknown weights layout" in err and "features.0.weight" in err and "timm-vit" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.safetensors"]


def test_unmatched_keys_and_existing_out_are_refused(tmp_path):
    vit = _timm("vit_small_patch16_224", img_size=32)
    sd = _state(vit)
    sd["blocks.0.attn.q_norm.weight"] = torch.ones(64)
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="not understood .*blocks.0.attn.q_norm.weight"):
        import_weights(tmp_path / "w.safetensors", domain="synthetic", out=tmp_path / "ckpt")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists; pass exist_ok=True to replace it"):
        import_weights(tmp_path / "w.safetensors", domain="synthetic", out=tmp_path / "taken")
    with pytest.raises(ConfigError, match="never replaced"):  # a folder that is not an imported checkpoint
        import_weights(tmp_path / "w.safetensors", domain="synthetic", out=tmp_path / "taken", exist_ok=True)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_exist_ok_replaces_an_imported_checkpoint_but_never_a_trained_one_or_the_source(tmp_path, capsys):
    from tests.conftest import tiny_config

    src = _save("safetensors", _state(_timm("vit_small_patch16_224", img_size=32)), tmp_path / "src")
    out = import_weights(src, domain="synthetic", out=tmp_path / "imported", img_size=32)
    first = (out / "card.json").read_text()
    with pytest.raises(SystemExit):
        cli_main(["import-weights", str(src), "--domain", "synthetic", "--out", str(out), "--img-size", "32"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "pass --exist-ok to replace it" in err
    (out / "stale.txt").write_text("from before")  # what the replaced checkpoint held is gone, atomically
    again = import_weights(src, domain="synthetic", out=out, img_size=32, exist_ok=True)
    assert again == out and domainfm.load(out).card["stage"] == json.loads(first)["stage"] == "import"
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imported", "src"]  # no temporary left behind
    trained = domainfm.pretrain(tiny_config(tmp_path / "run", train={"steps": 1}))
    for taken in (trained, trained.parent):
        with pytest.raises(ConfigError, match="never replaced"):
            import_weights(src, domain="synthetic", out=taken, img_size=32, exist_ok=True)
    with pytest.raises(DataError, match="holds the input"):
        import_weights(src, domain="synthetic", out=src.parent, img_size=32, exist_ok=True)


def _to_hf_names(sd: dict) -> dict:
    """timm ViT names -> Hugging Face transformers names (the inverse of the importer's renaming)."""
    block = {
        "norm1.": "layernorm_before.",
        "norm2.": "layernorm_after.",
        "attn.proj.": "attention.output.dense.",
        "mlp.fc1.": "intermediate.dense.",
        "mlp.fc2.": "output.dense.",
        "ls1.gamma": "layer_scale1.lambda1",
        "ls2.gamma": "layer_scale2.lambda1",
    }
    out = {}
    for k, v in sd.items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            if rest.startswith("attn.qkv."):
                for name, part in zip(("query", "key", "value"), v.chunk(3, 0)):
                    out[f"encoder.layer.{i}.attention.attention.{name}.{rest.rsplit('.', 1)[1]}"] = part.clone()
                continue
            src = next(s for s in block if rest.startswith(s))
            out[f"encoder.layer.{i}.{block[src]}{rest[len(src) :]}"] = v
        elif not k.startswith("head"):
            out[
                {
                    "cls_token": "embeddings.cls_token",
                    "pos_embed": "embeddings.position_embeddings",
                    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
                    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
                    "norm.weight": "layernorm.weight",
                    "norm.bias": "layernorm.bias",
                }[k]
            ] = v
    return out


def test_hugging_face_transformers_names_in_a_folder(tmp_path):
    vit = _timm("vit_small_patch16_224", img_size=32, depth=2, init_values=0.1)
    folder = tmp_path / "hf"
    folder.mkdir()
    sd = {f"vit.{k}": v.contiguous() for k, v in _to_hf_names(_state(vit)).items()}
    sd["decoder.decoder_embed.weight"] = torch.zeros(8, 384)  # a ViTMAEForPreTraining file: the decoder is left out
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "vit_mae", "num_attention_heads": 6}))
    ckpt = import_weights(folder, domain="synthetic", out=tmp_path / "ckpt", channels=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (domainfm.load(ckpt).features(x)["tokens"] - _ref_tokens(vit, x)).abs().max() < TOL
    imp = json.loads((ckpt / "card.json").read_text())["import"]
    assert imp["layout"] == "hf-transformers" and imp["prefix"] == "vit." and imp["keys_outside_prefix"] == 1
    assert imp["detected"]["num_heads_from"] == "config.json num_attention_heads"


def test_training_checkpoint_with_namespace_args_loads(tmp_path):
    import argparse

    vit = _timm("vit_small_patch16_224", img_size=32)
    torch.save(
        {"model": _state(vit), "epoch": 799, "args": argparse.Namespace(lr=1e-3, model="mae_vit_small")},
        tmp_path / "checkpoint-799.pth",
    )
    ckpt = import_weights(tmp_path / "checkpoint-799.pth", domain="synthetic", out=tmp_path / "ckpt", channels=3)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (domainfm.load(ckpt).features(x)["tokens"] - _ref_tokens(vit, x)).abs().max() < TOL


def test_cli_routes_import_options_and_domain_flags(tmp_path):
    vit = _timm("vit_small_patch16_224", img_size=32, in_chans=4)
    save_file(_state(vit), str(tmp_path / "w.safetensors"))
    assert (
        cli_run(
            [
                "import-weights",
                str(tmp_path / "w.safetensors"),
                "--domain",
                "remote_sensing",
                "--out",
                str(tmp_path / "ckpt"),
                "--source-bands",
                "B02,B03,B04,B08",
                "--patch-embed",
                "2d",
                "--img-size",
                "32",
                "--bands",
                "B08,B04",
            ]
        )
        == 0
    )
    imp = json.loads((tmp_path / "ckpt" / "card.json").read_text())["import"]
    assert [(c["target"], c["from"]) for c in imp["channels"]] == [("B08", ["B08"]), ("B04", ["B04"])]
