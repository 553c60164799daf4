"""``evaluate``: does pretraining help, by how much, with how few labels.

One call embeds the labelled train/test data with the checkpoint's encoder and with a randomly
initialised encoder of the same shape (plus any other checkpoint given), runs the chosen protocols
at each label fraction and seed, and reports means, bootstrap 95% intervals and the gain over the
baseline.

Example (Python, a tiny checkpoint on generated shapes):
    >>> import tempfile
    >>> from domainfm.pipelines import pretrain
    >>> ckpt = pretrain({"domain": "synthetic", "out": tempfile.mkdtemp(), "data": {"img_size": 16},
    ...     "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
    ...     "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False}})
    >>> res = evaluate(ckpt, protocol="knn", fractions=(1.0,), seeds=1, n_boot=20, max_train=64, max_test=64)
    >>> sorted({r["encoder"] for r in res})
    ['pretrained', 'random']

Example (CLI):
    domainfm evaluate runs/pneumo/checkpoint --data pneumoniamnist.npz --protocol linear,knn \\
        --fractions 0.01,0.1,1 --seeds 3 --baseline random --out runs/pneumo/eval
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.config import Config
from domainfm.data.splits import holdout_mask
from domainfm.errors import CheckpointError, ConfigError, DataError, DomainFMError, did_you_mean, unknown_choice
from domainfm.eval.against import SupervisedRuns, paired_gains
from domainfm.eval.embeddings import EmbeddingCache, cache_key, embed_dataset, fingerprint_path
from domainfm.eval.finetune import dataset_tensors, finetune_classifier, finetune_segmenter
from domainfm.eval.metrics import CLASSIFICATION_METRICS, SEGMENTATION_METRICS, bootstrap_ci, segmentation_metrics
from domainfm.eval.protocols import DEFAULT_CS, fewshot_probe, knn_probe, linear_probe
from domainfm.eval.report import EvalResult, write_report
from domainfm.eval.splits import check_labels, check_pair, random_fraction, stratified_fraction, stratified_split
from domainfm.heads import default_head
from domainfm.io_safety import check_exists
from domainfm.model import load
from domainfm.models.encoder import GLOBAL_POOLS, build_encoder
from domainfm.registry import get_domain
from domainfm.runconfig import config_from_card, load_config
from domainfm.utils import parse_list

PROTOCOLS = ("linear", "knn", "fewshot", "finetune", "lora")
FROZEN = ("linear", "knn", "fewshot")
RANDOM_SEED = 0  # init seed of the random baseline encoder (fixed: the baseline is reproducible)


# ---------------------------------------------------------------------------------------------
# small parsing helpers
def parse_protocols(protocol: str | Sequence[str]) -> list[str]:
    """``"linear,knn"`` or ``["linear", "knn"]`` -> validated list.

    Example:
        >>> parse_protocols("linear, knn")
        ['linear', 'knn']
    """
    items = parse_list(protocol)
    bad = [p for p in items if p not in PROTOCOLS]
    if bad or not items:
        raise ConfigError(unknown_choice("protocol", bad[0] if bad else protocol, PROTOCOLS, "choose from"))
    return list(dict.fromkeys(items))


def parse_fractions(fractions) -> list[float]:
    """``"0.01,0.1,1"`` / ``[1, 10, 100]``-style percentages are not guessed: values must be in (0, 1].

    Example:
        >>> parse_fractions("0.01,0.1,1")
        [0.01, 0.1, 1.0]
    """
    try:
        out = parse_list(fractions, float)
    except ValueError:
        raise ConfigError(f"fractions must be numbers in (0, 1], got {fractions!r}") from None
    bad = [f for f in out if not 0 < f <= 1]
    if bad or not out:
        raise ConfigError(f"label fraction {bad[0] if bad else fractions!r} is not in (0, 1] (use 0.01 for 1%)")
    return sorted(dict.fromkeys(out))


def _baselines(baseline) -> list[str]:
    """``"random,supervised"`` / a list / a checkpoint path -> the baselines; ``random`` is always among them.

    Example:
        >>> _baselines("supervised")
        ['random', 'supervised']
    """
    if baseline in (None, "", "none", False):
        return []
    items = parse_list(str(baseline) if isinstance(baseline, Path) else baseline, str)
    # the random-init baseline is always part of a comparison: every report shows the gain over it
    if "random" not in items:
        items = ["random"] + items
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------------------------------------
# checkpoint / data plumbing
def _load_model(checkpoint, device):
    if not isinstance(checkpoint, (str, Path)):
        return checkpoint  # an already loaded FoundationModel
    model = load(checkpoint)
    if device is not None and hasattr(model, "to"):
        model = model.to(device)
    return model


def build_config(card: dict, data=None, overrides: Sequence[str] = ()):
    """The run config for evaluating a checkpoint on ``data``: the card's config (or a bare one of the
    card's domain) with ``data`` and ``overrides`` applied."""
    if card.get("config"):
        return config_from_card(card, data=data, overrides=list(overrides))
    updates = {"data": {"path": str(data)}} if data is not None else None
    return load_config({"domain": card.get("domain", "synthetic")}, overrides=list(overrides), updates=updates)


def load_splits(cfg, seed: int = 0, test_split: str = "test"):
    """``(train_dataset, test_dataset, test_split_name)`` of a domain; 80/20 stratified split of
    ``train`` (seeded) when the domain has no test split."""
    domain = get_domain(cfg.domain)
    train = domain.dataset(cfg, "train")
    try:
        test = domain.dataset(cfg, test_split)
        if len(test) == 0:
            raise DataError(cfg.data.path, f"split {test_split!r} is empty")
        return train, test, test_split
    except (DomainFMError, NotImplementedError, KeyError, ValueError, FileNotFoundError):
        if len(train) and "label" not in train[0]:  # segmentation: a plain seeded 80/20 split
            held = holdout_mask(len(train), 0.2, seed)
            keep, hold = np.flatnonzero(~held), np.flatnonzero(held)
        else:
            labels = np.array([_item_label(train, i, cfg.data.path) for i in range(len(train))])
            keep, hold = stratified_split(labels, 0.2, seed=seed, source=cfg.data.path)
        return (
            torch.utils.data.Subset(train, keep.tolist()),
            torch.utils.data.Subset(train, hold.tolist()),
            "train[20% held out]",
        )


def _item_label(ds, i, source):
    s = ds[i]
    if "label" not in s:
        raise DataError(
            (s.get("meta") or {}).get("path") or source, "sample has no 'label': evaluate needs labelled data"
        )
    return int(torch.as_tensor(s["label"]).reshape(-1)[0])


def check_card_matches(card: dict, sample: dict, checkpoint=None, data=None) -> None:
    """Raise :class:`CheckpointError` (one line) if the data's channels or spatial dims do not fit the card.

    Example:
        >>> card = {"encoder": {"img_size": [32, 32], "in_chans": 3}}
        >>> check_card_matches(card, {"image": torch.zeros(1, 32, 32)}, "ck", "d.npz")
        Traceback (most recent call last):
        ...
        domainfm.errors.CheckpointError: checkpoint ck was trained on 3-channel inputs but d.npz gives 1-channel ...
    """
    enc = card.get("encoder") or {}
    image = sample["image"]
    dims = len(enc["img_size"]) if isinstance(enc.get("img_size"), (list, tuple)) else None
    if dims is not None and image.ndim - 1 != dims:
        raise CheckpointError(
            f"checkpoint {checkpoint} takes {dims}D images but {data} gives "
            f"{image.ndim - 1}D ones (shape {tuple(image.shape)})"
        )
    chans = enc.get("in_chans")
    if chans is not None and enc.get("patch_embed") != "wavelength" and image.shape[0] != chans:
        raise CheckpointError(
            f"checkpoint {checkpoint} was trained on {chans}-channel inputs but {data} gives "
            f"{image.shape[0]}-channel images (shape {tuple(image.shape)})"
        )


def random_like(model, card: dict, seed: int = RANDOM_SEED):
    """A copy of ``model`` whose encoder is re-initialised (``build_encoder(**card["encoder"])``, fixed seed).

    The copy keeps the model's own ``embed`` path, so both encoders are pooled the same way.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_encoder(**card["encoder"])
    try:
        rand = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - a model that cannot be copied: use the bare encoder
        return fresh.to(_device(model))
    enc = getattr(rand, "encoder", rand)
    missing = enc.load_state_dict(fresh.state_dict(), strict=False)
    if missing.missing_keys:
        raise CheckpointError(
            f"random baseline: encoder of shape {card['encoder']} does not match "
            f"the checkpoint's ({len(missing.missing_keys)} missing weights)"
        )
    return rand


def with_pool(model, pool: str | None):
    """``(model, pooling)``: ``model`` (a copy when ``pool`` changes it) pooling with ``pool``.

    ``"token+avg"`` on an encoder without a class token falls back to ``"avg"``; ``None`` keeps the
    encoder's own pooling. Encoders without ``set_global_pool`` are returned as they are.

    Example:
        >>> from domainfm.models import build_encoder
        >>> enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=1, embed_dim=32,
        ...                     num_heads=2, class_token=True)
        >>> other, used = with_pool(enc, "token+avg")
        >>> used, other.pooled_dim, enc.global_pool
        ('token+avg', 64, 'token')
    """
    enc = getattr(model, "encoder", model)
    if not hasattr(enc, "set_global_pool"):
        return model, getattr(enc, "global_pool", None)
    if pool is None or pool == enc.global_pool:
        return model, enc.global_pool
    if pool == "token+avg" and enc.cls_token is None:
        pool = "avg"
    if pool == enc.global_pool:
        return model, pool
    copied = copy.deepcopy(model)
    getattr(copied, "encoder", copied).set_global_pool(pool)
    return copied, pool


def _device(model) -> torch.device:
    mod = getattr(model, "encoder", model)
    p = next(mod.parameters(), None) if isinstance(mod, torch.nn.Module) else None
    return p.device if p is not None else torch.device("cpu")


def _encoder_of(model):
    return getattr(model, "encoder", model)


# ---------------------------------------------------------------------------------------------
def evaluate(
    checkpoint,
    data=None,
    protocol: str | Sequence[str] = "linear",
    fractions=(0.01, 0.1, 1.0),
    seeds: int = 3,
    baseline="random",
    out=None,
    overrides: Sequence[str] = (),
    *,
    k: int = 20,
    Cs=DEFAULT_CS,
    shots=(1, 5, 10),
    episodes: int = 5,
    n_boot: int = 1000,
    batch_size: int = 64,
    cache_dir=None,
    device: str | None = None,
    test_split: str = "test",
    max_train: int | None = None,
    max_test: int | None = None,
    finetune_kwargs: dict | None = None,
    plots: bool = True,
    progress: bool = False,
    datasets: tuple | None = None,
    pool: str | None = None,
    supervised_kwargs: dict | None = None,
    exist_ok: bool = False,
) -> EvalResult:
    """Evaluate a pretrained checkpoint against a random-init encoder of the same shape.

    Args:
        checkpoint: checkpoint folder (or a loaded ``FoundationModel``).
        data: labelled data path for the checkpoint's domain (``data.path`` of the config).
        protocol: ``linear``, ``knn``, ``fewshot``, ``finetune``, ``lora`` or a comma list of them.
            Frozen protocols (``linear``/``knn``/``fewshot``) embed each split once (cached as npz).
        fractions: labelled fractions of the training split (stratified, seeded; not for fewshot,
            which uses ``shots`` per class and ``episodes`` episodes per seed).
        seeds: number of seeds (label subset, probe init, fine-tuning order).
        baseline: ``"random"``, ``"supervised"``, another checkpoint path, a comma list / list of them,
            or ``None``. The random-init baseline is always included when any baseline is asked for.
            ``"supervised"`` trains an ordinary network from scratch (ResNet-18 sized to the input, or a
            MONAI U-Net for segmentation) for every label fraction and seed on exactly the labelled items
            the probes see (:mod:`domainfm.eval.supervised`); its records have encoder and protocol
            ``supervised``. Every other encoder's record carries ``vs``: its gain over each baseline with a
            paired bootstrap interval (``gain``/``gain_low``/``gain_high`` repeat the one over random).
        out: folder for ``report.json``, ``report.md``, plots and the embedding cache.
        exist_ok: a report already in ``out`` is refused (``False``) or replaced file by file, atomically
            (``True``); the embedding cache there is reused either way.
        overrides: ``key=value`` config overrides (e.g. ``data.options.xxx=...``).
        k: neighbours of the kNN probe. Cs: the linear probe's C sweep.
        n_boot: bootstrap resamples. cache_dir: embedding cache folder (default ``out/embeddings``).
        max_train, max_test: caps on the number of items (quick runs).
        finetune_kwargs: passed to :func:`domainfm.eval.finetune.finetune_classifier`
            (``epochs``, ``lr``, ``layer_decay``, ``lora_rank``...).
        datasets: ``(train, test)`` datasets to use instead of building them from the config.
        pool: how every compared encoder pools an image into one vector: ``"token"``, ``"avg"`` or
            ``"token+avg"`` (class token and patch mean concatenated, DINO's linear-evaluation features;
            an encoder without a class token uses ``"avg"``). Default: each encoder's own
            ``model.global_pool``. The pooling used per encoder is in ``meta["pool"]``.
        supervised_kwargs: passed to the supervised baseline's trainer (``max_epochs``, ``patience``...).

    Returns:
        :class:`EvalResult` (a list of records; ``.to_frame()`` gives a DataFrame, ``.meta`` the
        settings, ``.paths`` the written files).
    """
    t0 = time.perf_counter()
    if int(k) < 1:
        raise ConfigError(f"k (kNN neighbours) must be >= 1, got {k}")
    if pool is not None and pool not in GLOBAL_POOLS:
        raise ConfigError(
            f"pool (one model.global_pool for every encoder): one of {GLOBAL_POOLS}, got {pool!r}"
            + did_you_mean(pool, GLOBAL_POOLS)
        )
    protocols = parse_protocols(protocol)
    fracs = parse_fractions(fractions)
    n_seeds = int(seeds)
    if n_seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds}")
    checkpoint, replicas = _pretraining_seeds(checkpoint)
    _check_report_out(out, exist_ok, [data, checkpoint])  # before any work
    model = _load_model(checkpoint, device)
    card = getattr(model, "card", None) or {}
    if datasets is not None:
        train_ds, test_ds = datasets
        cfg = None
        split_name = "given"
        domain_name = card.get("domain")
    else:
        cfg = build_config(card, data, overrides)
        domain_name = cfg.domain
        train_ds, test_ds, split_name = load_splits(cfg, seed=0, test_split=test_split)
    data_name = str(data) if data is not None else "(the checkpoint's data)"
    if len(train_ds) == 0:
        raise DataError(data_name, "the training split is empty")
    first = train_ds[0]
    if card.get("encoder"):
        check_card_matches(card, first, checkpoint, data_name)
    task = (cfg.finetune.task if datasets is None else None) or (
        "segmentation" if "label" not in first and "mask" in first else "classification"
    )
    if task == "segmentation":
        frozen = [p for p in protocols if p in FROZEN]
        if frozen:
            raise ConfigError(
                f"protocol {frozen[0]!r} needs class labels but {data_name} is a segmentation dataset "
                "(finetune.task=segmentation); use protocol=finetune or protocol=lora"
            )
        if "mask" not in first:
            raise DataError(data_name, "finetune.task is segmentation but the samples have no 'mask'")
    elif task != "classification":
        raise ConfigError(f"evaluate supports classification and segmentation, not finetune.task={task!r}")

    background = cfg.finetune.background if cfg is not None else True
    baselines = _baselines(baseline)
    encoders: dict[str, Any] = {"pretrained": model}
    enc_ids: dict[str, Any] = {
        "pretrained": {"ckpt": fingerprint_path(_weights_file(checkpoint)), "card": card.get("encoder")}
    }
    for i, other_ckpt in enumerate(replicas, start=1):
        encoders[f"pretrained#{i}"] = _replica(other_ckpt, card, device or _device(model))
        enc_ids[f"pretrained#{i}"] = {"ckpt": fingerprint_path(_weights_file(other_ckpt)), "card": card.get("encoder")}
    for b in baselines:
        if b == "supervised":
            continue
        if b == "random":
            if not card.get("encoder"):
                raise CheckpointError(
                    f"checkpoint {checkpoint} has no encoder in its card: cannot build a random baseline"
                )
            encoders["random"] = random_like(model, card)
            enc_ids["random"] = {"random": card["encoder"], "seed": RANDOM_SEED}
        else:
            other = _load_model(b, device or _device(model))
            other_card = getattr(other, "card", {}) or {}
            if other_card.get("encoder"):
                check_card_matches(other_card, train_ds[0], b, data_name)
            name = Path(b).name or str(b)
            if name in encoders:
                name = str(b)
            encoders[name] = other
            enc_ids[name] = {"ckpt": fingerprint_path(_weights_file(b)), "card": other_card.get("encoder")}
    gain_vs = "random" if "random" in encoders else None
    pools = {}
    for name in list(encoders):
        encoders[name], pools[name] = with_pool(encoders[name], pool)
        enc_ids[name]["pool"] = pools[name]

    cache_folder = cache_dir if cache_dir is not None else (Path(out) / "embeddings" if out is not None else None)
    cache = EmbeddingCache(cache_folder)
    data_id = {
        "data": fingerprint_path(data),
        "overrides": list(overrides),
        "train_n": len(train_ds),
        "test_n": len(test_ds),
        "split": split_name,
        "max": [max_train, max_test],
    }
    sup = None
    if "supervised" in baselines:
        sup = SupervisedRuns(
            train_ds,
            test_ds,
            task,
            data_name,
            max_train,
            max_test,
            {**({"device": device} if device is not None else {}), **(supervised_kwargs or {})},
            cache=cache,
            data_id=data_id,
        )

    records: list[dict] = []
    n_test = None
    seconds: dict[str, float] = {}
    for proto_group in (["frozen"] if any(p in FROZEN for p in protocols) else []) + [
        p for p in protocols if p not in FROZEN
    ]:
        started, sup_before = time.perf_counter(), (sup.seconds() if sup is not None else 0.0)
        if proto_group == "frozen":
            emb = {}
            for name, m in encoders.items():
                key_tr = cache_key(enc=enc_ids[name], data=data_id, part="train")
                key_te = cache_key(enc=enc_ids[name], data=data_id, part="test")
                emb[name] = (
                    cache.get_or_compute(
                        key_tr,
                        lambda m=m: embed_dataset(
                            m, train_ds, batch_size, source=data_name, progress=progress, max_items=max_train
                        ),
                        meta={"encoder": name, "part": "train"},
                    ),
                    cache.get_or_compute(
                        key_te,
                        lambda m=m: embed_dataset(
                            m, test_ds, batch_size, source=data_name, progress=progress, max_items=max_test
                        ),
                        meta={"encoder": name, "part": "test"},
                    ),
                )
            ytr = check_labels(emb["pretrained"][0][1], data_name, "training labels")
            yte = check_labels(emb["pretrained"][1][1], data_name, "test labels")
            n_test = yte.size
            num_classes = int(max(ytr.max(), yte.max()) + 1)
            for p in [p for p in protocols if p in FROZEN]:
                records += _run_frozen(
                    p,
                    emb,
                    ytr,
                    yte,
                    num_classes,
                    fracs,
                    n_seeds,
                    k,
                    Cs,
                    shots,
                    episodes,
                    n_boot,
                    gain_vs,
                    data_name,
                    sup,
                )
        elif task == "segmentation":
            xtr, mtr, wl = dataset_tensors(train_ds, data_name, max_items=max_train, target="mask")
            xte, mte, _ = dataset_tensors(test_ds, data_name, max_items=max_test, target="mask")
            n_test = int(mte.shape[0])
            num_classes = int(max(mtr.max(), mte.max()) + 1)
            classes = getattr(train_ds, "classes", None)
            if classes:
                num_classes = max(num_classes, len(classes))
            head_factory = _segmentation_head_factory(domain_name, cfg if datasets is None else None, num_classes)
            records += _run_segmentation(
                proto_group,
                encoders,
                head_factory,
                xtr,
                mtr,
                xte,
                mte.numpy(),
                wl,
                num_classes,
                fracs,
                n_seeds,
                n_boot,
                gain_vs,
                data_name,
                finetune_kwargs or {},
                ignore_background=background,
                sup=sup,
            )
        else:
            xtr, ytr, wl = dataset_tensors(train_ds, data_name, max_items=max_train)
            xte, yte, _ = dataset_tensors(test_ds, data_name, max_items=max_test)
            ytr = check_labels(ytr, data_name, "training labels")
            yte = check_labels(yte, data_name, "test labels")
            n_test = yte.size
            num_classes = int(max(ytr.max(), yte.max()) + 1)
            records += _run_finetune(
                proto_group,
                encoders,
                xtr,
                ytr,
                xte,
                yte,
                wl,
                num_classes,
                fracs,
                n_seeds,
                n_boot,
                gain_vs,
                data_name,
                finetune_kwargs or {},
                sup,
            )
        sup_after = sup.seconds() if sup is not None else 0.0
        seconds[proto_group] = round(time.perf_counter() - started - (sup_after - sup_before), 2)
    if sup is not None:
        records += _supervised_records(sup, n_boot, num_classes, task, background)

    meta = {
        "checkpoint": str(checkpoint) if isinstance(checkpoint, (str, Path)) else type(checkpoint).__name__,
        "data": data_name,
        "domain": domain_name,
        "task": task,
        "protocols": protocols,
        "fractions": fracs,
        "seeds": n_seeds,
        "baseline": baselines,
        "gain_vs": gain_vs,
        "compute": _compute(card, model, seconds, sup),
        "encoders": [n for n in encoders if "#" not in n],
        "pretraining_seeds": 1 + len(replicas),
        "pool": pools,
        **(
            {"mean_over": "classes 1.. (label id 0 is background)" if background else "all classes, 0 included"}
            if task == "segmentation"
            else {}
        ),
        "n_train_pool": len(train_ds) if max_train is None else min(len(train_ds), max_train),
        "n_test": n_test,
        "test_split": split_name,
        "n_boot": n_boot,
        "k": k,
        "Cs": list(Cs),
        "cache": {
            "folder": None if cache_folder is None else str(cache_folder),
            "hits": cache.hits,
            "misses": cache.misses,
        },
    }
    result = EvalResult(records, meta)
    result.meta["seconds"] = round(time.perf_counter() - t0, 2)
    if out is not None:
        write_report(result, out, plots=plots)
    return result


def _check_report_out(out, exist_ok: bool, inputs: list) -> None:
    """An earlier report in ``out`` (its ``report.json``) is replaced only with ``exist_ok=True``
    (:func:`~domainfm.io_safety.check_exists`); the embedding cache beside it is kept and reused."""
    if out is not None:
        check_exists(Path(out) / "report.json", exist_ok, inputs)


def _pretraining_seeds(checkpoint) -> tuple[Any, list]:
    """``(first checkpoint, the others)``: a list of checkpoints are pretraining seeds of one recipe."""
    if isinstance(checkpoint, (list, tuple)):
        if not checkpoint:
            raise ConfigError("checkpoint: an empty list (give one checkpoint, or one per pretraining seed)")
        return checkpoint[0], list(checkpoint[1:])
    return checkpoint, []


def _replica(path, card: dict, device):
    """Another pretraining seed of the recipe: it must have the first checkpoint's encoder shape."""
    other = _load_model(path, device)
    if (getattr(other, "card", None) or {}).get("encoder") != card.get("encoder"):
        raise CheckpointError(
            f"{path}: its encoder differs from the first checkpoint's; checkpoints evaluated together must be "
            "pretraining seeds of one recipe (same model and data)"
        )
    return other


def _grouped(scores: dict[str, list]) -> dict[str, list]:
    """Scores of pretraining seeds (``pretrained#1``...) appended to ``pretrained``: their replicates
    (pretraining seed x probe seed) enter its means and intervals; baselines pair by probe seed."""
    out: dict[str, list] = {}
    for name, values in scores.items():
        out.setdefault(name.split("#")[0], []).extend(values)
    return out


def _weights_file(checkpoint):
    if not isinstance(checkpoint, (str, Path)):
        return None
    p = Path(checkpoint)
    return p / "model.safetensors" if (p / "model.safetensors").is_file() else p


def _vs_fields(vs: dict, gain_vs: str | None) -> dict:
    """A record's ``vs`` (gain over each baseline) and the legacy ``gain*`` fields (over ``gain_vs``)."""
    main = vs.get(gain_vs) if gain_vs else None
    return {
        "gain": main["gain"] if main else None,
        "gain_low": main["low"] if main else None,
        "gain_high": main["high"] if main else None,
        "baseline": gain_vs if main else None,
        "vs": vs or None,
    }


def _baseline_scores(name: str, scores: dict[str, list], sup, frac) -> dict[str, list]:
    """The baselines ``name`` is compared with: random init (unless it is random) and the supervised runs."""
    out = {b: scores[b] for b in ("random",) if b in scores and b != name}
    if sup is not None and frac is not None and sup.probas(frac):
        out["supervised"] = sup.probas(frac)
    return out


def _summarise(protocol, name, frac, shots, n_train, yte, probas, baselines, n_boot, seed_base, gain_vs):
    stats = bootstrap_ci(yte, probas, n_boot=n_boot, seed=seed_base, num_classes=probas[0].shape[1])
    vs = paired_gains(yte, probas, baselines, n_boot, seed=seed_base) if baselines else {}
    out = []
    for metric in CLASSIFICATION_METRICS:
        s = stats[metric]
        out.append(
            {
                "encoder": name,
                "protocol": protocol,
                "fraction": frac,
                "shots": shots,
                "n_train": n_train,
                "n_test": int(yte.size),
                "seeds": len(probas),
                "metric": metric,
                "mean": s["mean"],
                "ci_low": s["ci_low"],
                "ci_high": s["ci_high"],
                "per_seed": s["per_seed"],
                **_vs_fields(vs.get(metric, {}), gain_vs),
            }
        )
    return out


def _supervised_records(sup, n_boot, num_classes, task, background) -> list[dict]:
    """One set of records per label fraction for the supervised baseline (protocol ``supervised``)."""
    truth, records = sup.test_targets(), []
    for frac in sup.fractions():
        probas = sup.probas(frac)
        infos = [info for (f, _), (_, info) in sup.runs.items() if f == frac]
        n_train = infos[0].get("n_fit", 0) + infos[0].get("n_val", 0)
        if task == "segmentation":
            recs = _segmentation_records(
                "supervised", "supervised", frac, n_train, truth, probas, {}, n_boot, None, num_classes, background
            )
        else:
            recs = _summarise("supervised", "supervised", frac, None, n_train, truth, probas, {}, n_boot, 1234, None)
        for r in recs:
            r["steps"] = int(np.mean([i.get("steps", 0) for i in infos]))  # this fraction's runs
        records += recs
    return records


def _compute(card: dict, model, seconds: dict[str, float], sup) -> dict:
    """What each side of the comparison cost: pretraining (from the card), adaptation per protocol (every
    encoder together, the supervised baseline left out), and the supervised baseline's training."""
    enc = _encoder_of(model)
    params = sum(p.numel() for p in enc.parameters()) if isinstance(enc, torch.nn.Module) else None
    return {
        "pretraining": card.get("compute"),
        "encoder_params": params,
        "adaptation_seconds": seconds,
        "supervised": sup.compute() if sup is not None else None,
    }


def _run_frozen(
    protocol, emb, ytr, yte, num_classes, fracs, n_seeds, k, Cs, shots, episodes, n_boot, gain_vs, source, sup=None
):
    for name, ((x_tr, y_tr), (x_te, y_te)) in emb.items():
        check_pair(x_tr, y_tr, f"{source} ({name} train embeddings)")
        check_pair(x_te, y_te, f"{source} ({name} test embeddings)")
    settings = [(None, int(s)) for s in shots] if protocol == "fewshot" else [(f, None) for f in fracs]
    records = []
    for frac, shot in settings:
        probas: dict[str, list] = {name: [] for name in emb}
        n_train = None
        for seed in range(n_seeds):
            if protocol == "fewshot":
                for name, ((x_tr, _), (x_te, _)) in emb.items():
                    probas[name] += fewshot_probe(
                        x_tr, ytr, x_te, shots=shot, episodes=episodes, seed=seed, num_classes=num_classes
                    )
                n_train = int(sum(min(shot, int((ytr == c).sum())) for c in np.unique(ytr)))
                continue
            idx = stratified_fraction(ytr, frac, seed=seed, source=source)
            n_train = int(idx.size)
            for name, ((x_tr, _), (x_te, _)) in emb.items():
                if protocol == "linear":
                    p = linear_probe(x_tr[idx], ytr[idx], x_te, num_classes=num_classes, seed=seed, Cs=Cs)
                else:
                    p = knn_probe(x_tr[idx], ytr[idx], x_te, k=k, num_classes=num_classes)
                probas[name].append(p)
            if sup is not None:
                sup.scores(frac, seed, idx, num_classes)
        probas = _grouped(probas)
        for name in probas:
            base = _baseline_scores(name, probas, sup, frac) if gain_vs else {}
            records += _summarise(
                protocol, name, frac, shot, n_train, yte, probas[name], base, n_boot, seed_base=1234, gain_vs=gain_vs
            )
    return records


def _run_finetune(
    protocol, encoders, xtr, ytr, xte, yte, wl, num_classes, fracs, n_seeds, n_boot, gain_vs, source, kwargs, sup=None
):
    mode = "lora" if protocol == "lora" else "full"
    records = []
    for frac in fracs:
        probas: dict[str, list] = {name: [] for name in encoders}
        infos: dict[str, list] = {name: [] for name in encoders}
        n_train = None
        for seed in range(n_seeds):
            idx = stratified_fraction(ytr, frac, seed=seed, source=source)
            n_train = int(idx.size)
            for name, m in encoders.items():
                p, info = finetune_classifier(
                    _encoder_of(m), xtr[idx], ytr[idx], xte, num_classes, mode=mode, seed=seed, wavelengths=wl, **kwargs
                )
                probas[name].append(p)
                infos[name].append(info)
            if sup is not None:
                sup.scores(frac, seed, idx, num_classes)
        probas = _grouped(probas)
        for name in probas:
            base = _baseline_scores(name, probas, sup, frac) if gain_vs else {}
            recs = _summarise(protocol, name, frac, None, n_train, yte, probas[name], base, n_boot, 1234, gain_vs)
            for r in recs:
                r["trainable_fraction"] = float(np.mean([i["encoder_trainable_fraction"] for i in infos[name]]))
                r["steps"] = int(infos[name][0]["steps"])
            records += recs
    return records


def _segmentation_head_factory(domain_name, cfg, num_classes):
    """``fn(encoder) -> head``: the domain's segmentation head (core default when no domain/config)."""

    def make(encoder):
        if cfg is not None and domain_name:
            return get_domain(domain_name).head("segmentation", encoder, num_classes, cfg)
        return default_head("segmentation", encoder, num_classes, Config())

    return make


def _segmentation_records(
    protocol, name, frac, n_train, mte, preds, baselines, n_boot, gain_vs, num_classes, ignore_background
) -> list[dict]:
    """Records of one encoder's segmentation runs at one fraction: means, intervals and gains."""

    def metric_fn(t, p):
        return segmentation_metrics(t, p, num_classes, ignore_background=ignore_background)

    stats = bootstrap_ci(mte, preds, metric_fn=metric_fn, n_boot=n_boot, seed=1234)
    vs = paired_gains(mte, preds, baselines, n_boot, seed=1234, metric_fn=metric_fn) if baselines else {}
    return [
        {
            "encoder": name,
            "protocol": protocol,
            "fraction": frac,
            "shots": None,
            "n_train": n_train,
            "n_test": int(mte.shape[0]),
            "seeds": len(preds),
            "metric": metric,
            "mean": stats[metric]["mean"],
            "ci_low": stats[metric]["ci_low"],
            "ci_high": stats[metric]["ci_high"],
            "per_seed": stats[metric]["per_seed"],
            **_vs_fields(vs.get(metric, {}), gain_vs),
        }
        for metric in SEGMENTATION_METRICS
    ]


def _run_segmentation(
    protocol,
    encoders,
    head_factory,
    xtr,
    mtr,
    xte,
    mte,
    wl,
    num_classes,
    fracs,
    n_seeds,
    n_boot,
    gain_vs,
    source,
    kwargs,
    ignore_background=True,
    sup=None,
):
    mode = "lora" if protocol == "lora" else "full"
    records = []
    for frac in fracs:
        preds: dict[str, list] = {name: [] for name in encoders}
        infos: dict[str, list] = {name: [] for name in encoders}
        n_train = None
        for seed in range(n_seeds):
            idx = random_fraction(xtr.shape[0], frac, seed=seed, source=source)
            n_train = int(idx.size)
            for name, m in encoders.items():
                enc = _encoder_of(m)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    head = head_factory(enc)
                p, info = finetune_segmenter(
                    enc, head, xtr[idx], mtr[idx], xte, mode=mode, seed=seed, wavelengths=wl, **kwargs
                )
                preds[name].append(p)
                infos[name].append(info)
            if sup is not None:
                sup.scores(frac, seed, idx, num_classes)
        preds = _grouped(preds)
        for name in preds:
            base = _baseline_scores(name, preds, sup, frac) if gain_vs else {}
            recs = _segmentation_records(
                protocol, name, frac, n_train, mte, preds[name], base, n_boot, gain_vs, num_classes, ignore_background
            )
            for r in recs:
                r["trainable_fraction"] = float(np.mean([i["encoder_trainable_fraction"] for i in infos[name]]))
                r["steps"] = int(infos[name][0]["steps"])
            records += recs
    return records
