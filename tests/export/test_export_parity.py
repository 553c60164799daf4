"""Exported files (ONNX through onnxruntime alone, ``.pt2`` through ``torch.export.load``) give the checkpoint's
outputs on the same input, for every domain and task kind; the card and what a consumer needs travel inside."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import domainfm
from domainfm.cli import main as cli_main
from domainfm.exported import CARD_KEY, load_exported, read_card

PARITY = [  # (case, checkpoint, format): each domain, each task kind, both formats
    ("medical_3d", "seg", "onnx"),
    ("medical_3d", "seg", "pt2"),
    ("medical_3d", "encoder", "pt2"),
    ("medical_2d", "cls", "onnx"),
    ("remote_sensing", "seg", "onnx"),
    ("remote_sensing", "encoder", "pt2"),
    ("pathology", "cls", "onnx"),
    ("tokens", "encoder", "onnx"),
]


def run_file(path, pixels: np.ndarray) -> np.ndarray:
    """The exported file on its own runtime, nothing of the kit involved."""
    if path.suffix == ".onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: pixels})[0]
    with torch.no_grad():
        return torch.export.load(str(path)).module()(torch.from_numpy(pixels)).numpy()


def kit_output(checkpoint, kit_input) -> np.ndarray:
    """The checkpoint's output for one raw input, through its own preprocessing."""
    model = domainfm.load(checkpoint)
    x = model.preprocess(kit_input)[None]
    with torch.no_grad():
        out = model.logits(x) if model.head is not None else model.embed(x)
    return out.numpy()


@pytest.mark.parametrize("case,key,fmt", PARITY)
def test_the_exported_file_equals_the_checkpoint_on_raw_pixels(case, key, fmt, cases, exported):
    c = cases(case)
    got = run_file(exported(case, key, fmt), c["raw"][None])
    ref = kit_output(c[key], c.get("kit", c["raw"]))
    assert got.shape == ref.shape and np.isfinite(got).all()
    diff = float(np.abs(got - ref).max())
    print(f"parity {case}/{key}/{fmt}: max abs diff {diff:.2e} (output {got.shape})")
    assert diff <= 1e-4


def test_the_card_and_the_consumer_record_travel_inside_both_formats(cases, exported):
    c = cases("medical_3d")
    path = exported("medical_3d", "seg", "onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    card = json.loads(props[CARD_KEY])
    assert card["domain"] == "medical" and card["task"] == "segmentation"
    exp = card["export"]
    sha = hashlib.sha256((c["seg"] / "model.safetensors").read_bytes()).hexdigest()
    assert exp["source"]["weights_sha256"] == sha
    inp = exp["input"]
    assert inp["layout"] == "B x C x D x H x W" and inp["channels"] == ["intensity"]
    assert inp["spacing_mm"] == [2.0, 2.0, 2.0] and inp["orientation"] == "RAS" and "Hounsfield" in inp["pixels"]
    assert exp["normalization"]["inside"] and exp["normalization"]["clip"] == [0.0, 1.0]
    assert exp["output"]["kind"] == "logits" and exp["output"]["layout"] == "B x K x D x H x W"
    assert exp["window"]["size"] == [16, 16, 16] and exp["parity"]["max_abs_diff"] <= 1e-4
    extra = {CARD_KEY: ""}
    torch.export.load(str(exported("remote_sensing", "encoder", "pt2")), extra_files=extra)
    rs = json.loads(extra[CARD_KEY])["export"]
    assert rs["input"]["bands"] == rs["input"]["channels"] == ["B02", "B03", "B04", "B08"]
    assert len(rs["input"]["wavelengths_um"]) == 4 and rs["normalization"]["nan_to_zero"]
    assert rs["output"] == {**rs["output"], "kind": "embedding", "layout": "B x E"}
    path_card = read_card(exported("pathology", "cls", "onnx"))["export"]
    assert path_card["input"]["mpp"] == 1.0 and path_card["input"]["channels"] == ["R", "G", "B"]
    assert path_card["output"]["classes"] == ["background", "tissue"]


def test_spatial_size_is_dynamic_where_the_model_allows_it_and_stated_where_not(cases, exported):
    med = load_exported(exported("medical_3d", "seg", "onnx"))
    assert med.export["input"]["dynamic_spatial"] and med.export["input"]["shape"] == ["batch", 1, "D", "H", "W"]
    big = np.random.default_rng(5).uniform(-400, 500, (1, 24, 32, 16)).astype(np.float32)
    diff = np.abs(run_file(med.path, big[None]) - kit_output(cases("medical_3d")["seg"], big)).max()
    assert diff <= 1e-4
    with pytest.raises(domainfm.DataError, match="multiples of 8x8x8"):
        med.run(torch.zeros(1, 1, 20, 16, 16))
    rs = load_exported(exported("remote_sensing", "seg", "onnx"))  # UPerNet's adaptive pooling: one size in ONNX
    assert not rs.export["input"]["dynamic_spatial"] and "adaptive" in rs.export["input"]["fixed_size_reason"]
    assert rs.export["input"]["shape"] == ["batch", 4, 32, 32]
    with pytest.raises(domainfm.DataError, match="fixed size 32x32"):
        rs.run(torch.zeros(1, 4, 40, 40))


def test_fp16_reports_its_measured_tolerance_and_opset_is_kept(cases, tmp_path, capsys):
    c = cases("tokens")
    out = tmp_path / "tokens-fp16.onnx"
    with pytest.raises(SystemExit) as exc:
        cli_main(["export", str(c["encoder"]), "--out", str(out), "--fp16", "--opset", "18"])
    assert exc.value.code in (0, None)
    printed = capsys.readouterr().out
    exp = read_card(out)["export"]
    assert exp["fp16"] and exp["opset"] == 18 and 0 < exp["tolerance"] < 0.05
    assert f"{exp['tolerance']:.2e}" in printed and "fp16" in printed
    got = run_file(out, c["raw"][None])
    ref = kit_output(c["encoder"], c["raw"])
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 0.05


def test_info_prints_an_exported_files_card(exported, capsys):
    path = exported("pathology", "cls", "onnx")
    with pytest.raises(SystemExit):
        cli_main(["info", str(path)])
    out = capsys.readouterr().out
    assert "normalisation: inside the graph" in out and "parity with the checkpoint" in out
    card = json.loads(out[out.index("{") :])
    assert card["export"]["format"] == "onnx" and card["domain"] == "pathology"


def test_a_recipe_from_per_image_statistics_stays_outside_the_graph():
    from domainfm.deploy import ExportGraph
    from domainfm.medical.deploy import export_input

    card = {
        "encoder": {"in_chans": 1, "img_size": [16, 16]},
        "preprocessing": {
            "spatial_dims": 2,
            "modality": "xray",
            "crop_size": [16, 16],
            "normalization": {"kind": "minmax"},
        },
    }
    rec = export_input(card)
    assert rec["normalization"] is None and rec["recipe"] == {"kind": "minmax"} and "recipe" in rec["pixels"]
    enc = domainfm.build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():  # no normalisation inside: the graph takes the model-ready input as it is
        assert torch.allclose(ExportGraph(enc, None, None).eval()(x), enc.embed(x), atol=1e-6)
