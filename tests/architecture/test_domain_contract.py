"""Every installed domain, through the same checks: sample schema, card round trip (``load`` rebuilds
the same preprocessing), embed shape, predict in the source geometry, a bad file named in one line."""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import domainfm
from domainfm.domain import Domain, DomainExample
from domainfm.errors import DomainFMError, UnsupportedError
from domainfm.registry import add_domain, get_domain, list_domains
from domainfm.runconfig import load_config

# docs/core.md's worked example ("add a domain in one folder"), registered in-process as an installed
# plugin's entry point would register it
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs" / "plugin_example"))
from microscopy import MicroscopyDomain  # noqa: E402

add_domain("microscopy", MicroscopyDomain)
DOMAINS = list_domains()


@pytest.fixture(scope="module", params=DOMAINS)
def case(request, tmp_path_factory):
    """(domain, example, bound config, pretrained checkpoint) for each installed domain."""
    domain = get_domain(request.param)
    folder = tmp_path_factory.mktemp(f"contract_{request.param}")
    example = domain.example(folder)
    assert isinstance(example, DomainExample)
    cfg = load_config(example.config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt = domainfm.pretrain(example.config)
    return domain, example, cfg, ckpt, folder


def test_plugin_declares_the_contract(case):
    domain, _, cfg, _, _ = case
    assert isinstance(domain, Domain) and domain.name in DOMAINS
    assert dataclasses.is_dataclass(domain.Options) and dataclasses.is_dataclass(domain.PredictOptions)
    assert dataclasses.is_dataclass(domain.EmbedOptions)
    assert domain.spatial_dims(cfg) in (2, 3)
    assert all(isinstance(t, str) for t in domain.custom_tasks)


def test_samples_follow_the_schema(case):
    domain, _, cfg, _, _ = case
    dataset = domain.dataset(cfg, "pretrain")
    sample = dataset[0]
    image = sample["image"]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert image.ndim == domain.spatial_dims(cfg) + 1 and torch.isfinite(image).all()
    assert isinstance(sample["meta"], dict) and sample["meta"].get("path")


def test_card_round_trip_rebuilds_the_same_model_and_preprocessing(case):
    domain, _, cfg, ckpt, _ = case
    model = domainfm.load(ckpt)
    card = model.card
    assert card["domain"] == domain.name and card["preprocessing"] == domain.preprocessing(
        cfg, domain.dataset(cfg, "pretrain")
    )
    rebuilt = domainfm.load(ckpt)
    x = domain.dataset(cfg, "pretrain")[0]["image"][None]
    wavelengths = card["preprocessing"].get("wavelengths") if model.encoder.patch_embed.kind == "wavelength" else None
    kw = {"wavelengths": wavelengths} if wavelengths else {}
    z = model.embed(x, **kw)
    assert z.shape == (1, model.encoder.embed_dim)
    torch.testing.assert_close(rebuilt.embed(x, **kw), z)
    assert callable(model.preprocess)


def test_embed_writes_one_vector_per_sample(case):
    domain, example, cfg, ckpt, folder = case
    if not domain.needs_data_path:
        pytest.skip(f"domain {domain.name!r} reads no files to embed")
    out = domainfm.embed(ckpt, cfg.data.path, folder / example.embed_out)
    if out.suffix == ".npz":
        arrays = np.load(out)
        assert arrays["embeddings"].ndim == 2 and arrays["embeddings"].shape[1] == domainfm.load(ckpt).encoder.embed_dim
        assert len(arrays["paths"]) == len(arrays["embeddings"]) > 0
    else:  # per-file outputs (e.g. one feature file per slide)
        assert out.exists() and any(out.iterdir())


def test_predict_keeps_the_source_geometry(case):
    domain, example, _, ckpt, folder = case
    if example.task is None:
        with pytest.raises(UnsupportedError):
            domain.predict(domainfm.load(ckpt), folder / "x", folder / "y")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuned = domainfm.finetune(
            ckpt,
            task=example.task,
            out=folder / "finetune",
            overrides=example.finetune_overrides,
            **example.finetune_kwargs,
        )
        out = domainfm.predict(tuned, example.predict_input, folder / f"prediction{example.predict_suffix}")
    assert out.is_file() and example.same_geometry(example.predict_input, out)


def test_a_bad_file_is_named_in_one_line(case):
    domain, example, _, ckpt, folder = case
    if example.bad_file is None:
        pytest.skip(f"domain {domain.name!r} reads no files")
    before = example.bad_file.read_bytes()
    with pytest.raises(DomainFMError) as info:
        domainfm.embed(ckpt, example.bad_file, folder / f"bad_{example.embed_out}")
    message = str(info.value)
    assert example.bad_file.name in message and "\n" not in message
    assert example.bad_file.read_bytes() == before


def _store_domains() -> list:
    """Installed domains with a registered store preparer (``domainfm prepare``)."""
    from domainfm.store.spec import store_domains

    for name in DOMAINS:
        get_domain(name)  # a plugin registers its store preparer when it is loaded
    return list(store_domains())


@pytest.fixture(scope="module", params=_store_domains())
def stored(request, tmp_path_factory):
    """(domain name, store, manifest, checkpoint): the domain's example prepared into a store, then
    pretrained for 2 steps from ``data.path=STORE``."""
    pytest.importorskip("zarr")
    from domainfm.store import prepare, read_manifest

    name = request.param
    folder = tmp_path_factory.mktemp(f"store_{name}")
    config = get_domain(name).example(folder).config
    data = config["data"]
    store = folder / "store"
    report = prepare(name, data["path"], store, workers=1, options=data.get("options"), img_size=data.get("img_size"))
    assert report.prepared and not report.failed
    run = {**config, "out": str(folder / "from_store"), "data": {**data, "path": str(store)}}
    run["train"] = {**config.get("train", {}), "steps": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt = domainfm.pretrain(run)
    return name, store, read_manifest(store, name), ckpt


def test_pretrains_from_its_prepared_store(stored):
    name, store, manifest, ckpt = stored
    card = domainfm.load(ckpt).card
    assert card["domain"] == name and card["data"]["path"] == str(store)
    assert card["data"]["num_samples"] == manifest["samples"] > 0
    assert "StoreDataset" in str(card["data"].get("source"))


def test_the_card_records_the_store_provenance(stored):
    _, store, manifest, ckpt = stored
    record = domainfm.load(ckpt).card["data"]["store"]
    assert record["path"] == str(store) and record["sources"] == len(manifest["items"])
    assert record["software"]["domainfm"] == domainfm.__version__
