"""What a run is built from, shared by the pipelines: the dataset of a split (read by the domain, or data held
in memory as samples), the encoder a config describes, the data-derived recipe, and the run folder's checks.

Example:
    >>> data_updates("data/scans"), data_updates(None)
    ({'data': {'path': 'data/scans'}}, {})
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from torch import nn

from domainfm.card import Card
from domainfm.config import Config, save_config
from domainfm.data.adapters import adapt, is_in_memory
from domainfm.errors import ConfigError, DataError
from domainfm.eval.online import OnlineKNNProbe
from domainfm.io_safety import lock_run
from domainfm.models.encoder import build_encoder
from domainfm.recipes import Recipe, apply_recipe, facts_from_dataset, resolve_recipe
from domainfm.runconfig import load_config
from domainfm.store import is_store, open_store
from domainfm.train.checkpoint import check_run_dir, list_checkpoints
from domainfm.utils import pick_device

log = logging.getLogger("domainfm")


def is_main() -> bool:
    """Whether this process is rank 0 (or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


def encoder_for(cfg: Config, domain, dataset) -> nn.Module:
    """The encoder ``cfg.model`` describes, with the token maker the domain picks for ``dataset``."""
    kw = domain.encoder_kwargs(cfg, dataset)
    return build_encoder(
        cfg.model.name,
        depth=cfg.model.depth,
        embed_dim=cfg.model.embed_dim,
        num_heads=cfg.model.num_heads,
        drop_path_rate=cfg.model.drop_path_rate,
        class_token=cfg.model.class_token,
        num_registers=cfg.model.num_registers,
        global_pool=cfg.model.global_pool,
        **kw,
    )


def data_updates(data) -> dict:
    """Config updates for a ``data`` argument: a path sets ``data.path``; data in memory trains under the
    ``arrays`` domain (its metadata comes from the object)."""
    if data is None:
        return {}
    if is_in_memory(data):
        return {"domain": "arrays", "data": {"path": None}}
    return {"data": {"path": str(data)}}


def stored_data(cfg: Config, data, split: str = "pretrain"):
    """``data`` unchanged, or, when none is given and ``data.path`` is a prepared store (``domainfm prepare``),
    the store's random crops (:func:`domainfm.store.open_store`) for ``split``: training then reads partial
    chunks instead of the source files. The crop size is the one the store recorded when it was prepared
    (the domain's, from the options given to ``domainfm prepare``)."""
    if data is not None or not cfg.data.path or not is_store(cfg.data.path):
        return data
    store = open_store(cfg.data.path, split, seed=cfg.train.seed, domain=cfg.domain)  # crops as prepared
    cfg.data.options = _with_store_options(cfg, (store.info["settings"] or {}).get("options") or {})
    return store


def _with_store_options(cfg: Config, recorded: dict) -> dict:
    """``data.options`` with the preprocessing options a store was prepared with (its voxels already carry
    them, e.g. the modality inferred then); a given option that contradicts the store is one line."""
    given = dict(cfg.data.options or {})
    for key, value in recorded.items():
        if key in given and given[key] not in ("auto", None) and json.dumps(given[key]) != json.dumps(value):
            raise ConfigError(
                f"{cfg.data.path}: prepared with data.options.{key}={value!r}, not {given[key]!r}; drop "
                f"data.options.{key}, or prepare the store again with it"
            )
    return {**given, **recorded}


def dataset_for(domain, cfg: Config, split: str, data=None, labels=None, sampler=None, card: Card | None = None):
    """The domain's dataset for ``split``, or ``data`` held in memory as samples, prepared by the domain
    (:meth:`~domainfm.domain.Domain.prepare_in_memory`, e.g. normalised with the checkpoint's statistics)."""
    if not is_in_memory(data):
        if labels is not None or sampler is not None:
            raise ConfigError(
                "labels= and sampler= go with data held in memory (an array or a dataset object); "
                "a path brings its own labels"
            )
        return domain.dataset(cfg, split)
    options = cfg.data.options or {}  # the arrays domain's axis settings apply to data held in memory too
    spatial = ((card.preprocessing if card is not None else None) or {}).get("spatial_dims")
    spatial = spatial or options.get("spatial_dims")
    ds = adapt(data, labels, sampler=sampler, spatial_dims=spatial, channels_last=options.get("channels_last"))
    return domain.prepare_in_memory(ds, cfg, card)


def settle(cfg: Config, domain, stage: str) -> None:
    """Set on ``cfg`` what ``domain`` decides from its data for a ``stage`` run (:meth:`Domain.settle
    <domainfm.domain.Domain.settle>`), before any dataset is built; the domain prints and records its
    decisions itself."""
    for decision in domain.settle(cfg, stage):
        section, _, name = decision.key.partition(".")
        target = getattr(cfg, section, None)
        if target is None or not hasattr(target, name):
            raise ConfigError(f"domain {cfg.domain!r} settled an unknown config key {decision.key!r}")
        setattr(target, name, decision.value)


def run_recipe(cfg: Config, domain, dataset=None) -> Recipe:
    """Resolve and apply the data-derived recipe (:mod:`domainfm.recipes`) of a pretraining config: facts
    from ``dataset`` when the data is held in memory, else from the domain's :meth:`data_facts`."""
    facts = facts_from_dataset(dataset) if dataset is not None else domain.data_facts(cfg)
    device = pick_device(cfg.train.device).type
    recipe = resolve_recipe(cfg, facts, "cuda" if device == "cuda" else "cpu")
    apply_recipe(cfg, recipe, quiet=not (is_main() and cfg.train.progress))
    return recipe


def recipe_dataset(recipe: Recipe):
    """The dataset the recipe's facts were read from, when the recipe changed nothing that shapes it (no
    ``data.*`` decision): the pretraining data is then not built twice."""
    if recipe.facts.dataset is None or any(d.key.startswith("data.") for d in recipe.decisions):
        return None
    return recipe.facts.dataset


def start_run_dir(run_dir: Path, cfg: Config, resume: bool) -> None:
    """Refuse to overwrite a run before anything is written, then record the config the run uses."""
    check_run_dir(run_dir, resume)
    if is_main():
        lock_run(run_dir)  # creates a writable run_dir; a second process into this run is refused (engine releases)
        save_config(cfg, run_dir / "config.yaml")


def check_resume_matches(run_dir: Path, cfg: Config) -> None:
    """Resuming with another model, objective or domain than the run's would load the wrong weights."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return  # the engine says there is nothing to resume from
    before = Card.read(ckpts[-1]).config or {}
    now = cfg.to_dict()
    diffs = (
        [f"domain: {before.get('domain')!r} in the run, {now['domain']!r} now"]
        if before.get("domain") != now["domain"]
        else []
    )
    for section in ("model", "objective"):
        for key, value in now[section].items():
            if before.get(section, {}).get(key) != value:
                diffs.append(f"{section}.{key}: {before.get(section, {}).get(key)!r} in the run, {value!r} now")
    if diffs:
        raise ConfigError(
            f"{run_dir}: resume=True with a different setup than the run ({'; '.join(diffs[:3])}); "
            "resume with the run's config (load_config(out + '/config.yaml')), exist_ok=\"overwrite\" "
            "to start again, or another out"
        )


def online_probe(cfg: Config, domain):
    """kNN probe on labelled data (``data.val_path``, else the labelled splits of ``data.path``)."""
    vcfg = load_config(cfg, updates={"data": {"path": cfg.data.val_path}}) if cfg.data.val_path else cfg
    try:
        return OnlineKNNProbe(domain.dataset(vcfg, "train"), domain.dataset(vcfg, "val"), every=cfg.train.probe_every)
    except (DataError, NotImplementedError, KeyError) as exc:
        log.warning("online probe disabled: no labelled train/val splits (%s)", exc)
        return None
