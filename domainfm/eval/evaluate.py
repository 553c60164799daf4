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

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.card import Card
from domainfm.data.splits import holdout_mask
from domainfm.errors import CheckpointError, ConfigError, DataError, DomainFMError, did_you_mean, unknown_choice
from domainfm.eval.against import SupervisedRuns
from domainfm.eval.embeddings import EmbeddingCache, cache_key, embed_dataset, fingerprint_path
from domainfm.eval.encoders import (
    RANDOM_SEED,
    check_card_matches,
    encoder_device,
    encoder_of,
    item_label,
    load_model,
    pretraining_seeds,
    random_like,
    replica,
    weights_file,
    with_pool,
)
from domainfm.eval.finetune import dataset_tensors
from domainfm.eval.protocols import DEFAULT_CS
from domainfm.eval.report import EvalResult, write_report
from domainfm.eval.runs import run_finetune, run_frozen, run_segmentation, segmentation_head_factory, supervised_records
from domainfm.eval.splits import check_labels, stratified_split
from domainfm.io_safety import check_exists
from domainfm.models.encoder import GLOBAL_POOLS
from domainfm.registry import get_domain
from domainfm.runconfig import config_from_card, load_config
from domainfm.utils import parse_list

PROTOCOLS = ("linear", "knn", "fewshot", "finetune", "lora")
FROZEN = ("linear", "knn", "fewshot")


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


def build_config(card: Card | Mapping, data=None, overrides: Sequence[str] = ()):
    """The run config for evaluating a checkpoint on ``data``: the card's config (or a bare one of the
    card's domain) with ``data`` and ``overrides`` applied."""
    card = card if isinstance(card, Card) else Card.from_dict(card)
    if card.config:
        return config_from_card(card, data=data, overrides=list(overrides))
    updates = {"data": {"path": str(data)}} if data is not None else None
    return load_config({"domain": card.domain or "synthetic"}, overrides=list(overrides), updates=updates)


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
            labels = np.array([item_label(train, i, cfg.data.path) for i in range(len(train))])
            keep, hold = stratified_split(labels, 0.2, seed=seed, source=cfg.data.path)
        return (
            torch.utils.data.Subset(train, keep.tolist()),
            torch.utils.data.Subset(train, hold.tolist()),
            "train[20% held out]",
        )


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
    settings = EvalSettings(
        protocols=parse_protocols(protocol),
        fractions=parse_fractions(fractions),
        seeds=int(seeds),
        k=k,
        Cs=Cs,
        shots=shots,
        episodes=episodes,
        n_boot=n_boot,
        batch_size=batch_size,
        max_train=max_train,
        max_test=max_test,
        finetune_kwargs=finetune_kwargs or {},
        progress=progress,
        pool=pool,
    )
    checkpoint, replicas = pretraining_seeds(checkpoint)
    _check_report_out(out, exist_ok, [data, checkpoint])  # before any work
    run = _Evaluation(settings, load_model(checkpoint, device), checkpoint, device)
    run.load_data(data, overrides, datasets, test_split)
    run.build_encoders(replicas, _baselines(baseline))
    cache_folder = cache_dir if cache_dir is not None else (Path(out) / "embeddings" if out is not None else None)
    run.prepare_runs(cache_folder, overrides, supervised_kwargs)
    records = run.run_protocols()
    result = EvalResult(records, run.meta(cache_folder))
    result.meta["seconds"] = round(time.perf_counter() - t0, 2)
    if out is not None:
        write_report(result, out, plots=plots)
    return result


@dataclasses.dataclass
class EvalSettings:
    """What :func:`evaluate` runs (its keyword arguments, parsed and checked)."""

    protocols: list[str]
    fractions: list[float]
    seeds: int
    k: int = 20
    Cs: Sequence[float] = DEFAULT_CS
    shots: Sequence[int] = (1, 5, 10)
    episodes: int = 5
    n_boot: int = 1000
    batch_size: int = 64
    max_train: int | None = None
    max_test: int | None = None
    finetune_kwargs: dict = dataclasses.field(default_factory=dict)
    progress: bool = False
    pool: str | None = None

    def __post_init__(self):
        if int(self.k) < 1:
            raise ConfigError(f"k (kNN neighbours) must be >= 1, got {self.k}")
        if self.pool is not None and self.pool not in GLOBAL_POOLS:
            raise ConfigError(
                f"pool (one model.global_pool for every encoder): one of {GLOBAL_POOLS}, got {self.pool!r}"
                + did_you_mean(self.pool, GLOBAL_POOLS)
            )
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")

    def groups(self) -> list[str]:
        """The protocols in the order they run: the frozen ones together (one embedding pass), then each other."""
        frozen = ["frozen"] if any(p in FROZEN for p in self.protocols) else []
        return frozen + [p for p in self.protocols if p not in FROZEN]


class _Evaluation:
    """One :func:`evaluate` call in named steps: the labelled splits and the task, the encoders compared,
    the embedding cache and supervised baseline, each protocol group, and the run's metadata."""

    def __init__(self, settings: EvalSettings, model, checkpoint, device):
        self.s, self.model, self.checkpoint, self.device = settings, model, checkpoint, device
        self.card = _card_of(model)
        self.n_test = None
        self.num_classes = None
        self.seconds: dict[str, float] = {}
        self.sup = None

    # ------------------------------------------------------------------------------------------ data
    def load_data(self, data, overrides, datasets, test_split: str) -> None:
        card = self.card
        self.given = datasets is not None
        if self.given:
            self.train_ds, self.test_ds = datasets
            self.cfg, self.split_name, self.domain_name = None, "given", card.domain
        else:
            self.cfg = build_config(card, data, overrides)
            self.domain_name = self.cfg.domain
            self.train_ds, self.test_ds, self.split_name = load_splits(self.cfg, seed=0, test_split=test_split)
        self.data = data
        self.data_name = str(data) if data is not None else "(the checkpoint's data)"
        if len(self.train_ds) == 0:
            raise DataError(self.data_name, "the training split is empty")
        first = self.train_ds[0]
        if card.encoder:
            check_card_matches(card, first, self.checkpoint, self.data_name)
        self.task = self._task(first)
        self.background = self.cfg.finetune.background if self.cfg is not None else True

    def _task(self, first: dict) -> str:
        """Classification or segmentation (the config's task, else what the samples carry), checked against
        the protocols."""
        task = (self.cfg.finetune.task if not self.given else None) or (
            "segmentation" if "label" not in first and "mask" in first else "classification"
        )
        if task == "segmentation":
            frozen = [p for p in self.s.protocols if p in FROZEN]
            if frozen:
                raise ConfigError(
                    f"protocol {frozen[0]!r} needs class labels but {self.data_name} is a segmentation dataset "
                    "(finetune.task=segmentation); use protocol=finetune or protocol=lora"
                )
            if "mask" not in first:
                raise DataError(self.data_name, "finetune.task is segmentation but the samples have no 'mask'")
        elif task != "classification":
            raise ConfigError(f"evaluate supports classification and segmentation, not finetune.task={task!r}")
        return task

    # ------------------------------------------------------------------------------------------ encoders
    def build_encoders(self, replicas: list, baselines: list[str]) -> None:
        """The pretrained encoder (and its other pretraining seeds), the random-init baseline and any other
        checkpoint, each with its cache identity and pooling."""
        card, model = self.card, self.model
        self.baselines, self.replicas = baselines, replicas
        self.encoders: dict[str, Any] = {"pretrained": model}
        self.enc_ids: dict[str, Any] = {
            "pretrained": {"ckpt": fingerprint_path(weights_file(self.checkpoint)), "card": card.encoder}
        }
        for i, other_ckpt in enumerate(replicas, start=1):
            self.encoders[f"pretrained#{i}"] = replica(other_ckpt, card, self.device or encoder_device(model))
            self.enc_ids[f"pretrained#{i}"] = {
                "ckpt": fingerprint_path(weights_file(other_ckpt)),
                "card": card.encoder,
            }
        for b in baselines:
            if b == "random":
                self._add_random()
            elif b != "supervised":
                self._add_checkpoint(b)
        self.gain_vs = "random" if "random" in self.encoders else None
        self.pools = {}
        for name in list(self.encoders):
            self.encoders[name], self.pools[name] = with_pool(self.encoders[name], self.s.pool)
            self.enc_ids[name]["pool"] = self.pools[name]

    def _add_random(self) -> None:
        if not self.card.encoder:
            raise CheckpointError(
                f"checkpoint {self.checkpoint} has no encoder in its card: cannot build a random baseline"
            )
        self.encoders["random"] = random_like(self.model, self.card)
        self.enc_ids["random"] = {"random": self.card.encoder, "seed": RANDOM_SEED}

    def _add_checkpoint(self, path) -> None:
        other = load_model(path, self.device or encoder_device(self.model))
        other_card = _card_of(other)
        if other_card.encoder:
            check_card_matches(other_card, self.train_ds[0], path, self.data_name)
        name = Path(path).name or str(path)
        if name in self.encoders:
            name = str(path)
        self.encoders[name] = other
        self.enc_ids[name] = {"ckpt": fingerprint_path(weights_file(path)), "card": other_card.encoder}

    # ------------------------------------------------------------------------------------------ runs
    def prepare_runs(self, cache_folder, overrides, supervised_kwargs: dict | None) -> None:
        """The embedding cache (keyed by data and encoder) and the supervised baseline's runs."""
        s = self.s
        self.cache = EmbeddingCache(cache_folder)
        self.data_id = {
            "data": fingerprint_path(self.data),
            "overrides": list(overrides),
            "train_n": len(self.train_ds),
            "test_n": len(self.test_ds),
            "split": self.split_name,
            "max": [s.max_train, s.max_test],
        }
        if "supervised" in self.baselines:
            self.sup = SupervisedRuns(
                self.train_ds,
                self.test_ds,
                self.task,
                self.data_name,
                s.max_train,
                s.max_test,
                {**({"device": self.device} if self.device is not None else {}), **(supervised_kwargs or {})},
                cache=self.cache,
                data_id=self.data_id,
            )

    def run_protocols(self) -> list[dict]:
        """Every protocol group, timed (the supervised baseline's own training time kept apart)."""
        records: list[dict] = []
        for group in self.s.groups():
            started, sup_before = time.perf_counter(), self._sup_seconds()
            if group == "frozen":
                records += self._frozen()
            elif self.task == "segmentation":
                records += self._segmentation(group)
            else:
                records += self._finetune(group)
            self.seconds[group] = round(time.perf_counter() - started - (self._sup_seconds() - sup_before), 2)
        if self.sup is not None:
            records += supervised_records(self.sup, self.s.n_boot, self.num_classes, self.task, self.background)
        return records

    def _sup_seconds(self) -> float:
        return self.sup.seconds() if self.sup is not None else 0.0

    def _embeddings(self, name: str, model, part: str):
        ds, cap = (self.train_ds, self.s.max_train) if part == "train" else (self.test_ds, self.s.max_test)
        return self.cache.get_or_compute(
            cache_key(enc=self.enc_ids[name], data=self.data_id, part=part),
            lambda: embed_dataset(
                model, ds, self.s.batch_size, source=self.data_name, progress=self.s.progress, max_items=cap
            ),
            meta={"encoder": name, "part": part},
        )

    def _frozen(self) -> list[dict]:
        s = self.s
        emb = {
            name: (self._embeddings(name, m, "train"), self._embeddings(name, m, "test"))
            for name, m in self.encoders.items()
        }
        ytr = check_labels(emb["pretrained"][0][1], self.data_name, "training labels")
        yte = check_labels(emb["pretrained"][1][1], self.data_name, "test labels")
        self.n_test = yte.size
        self.num_classes = int(max(ytr.max(), yte.max()) + 1)
        records: list[dict] = []
        for p in [p for p in s.protocols if p in FROZEN]:
            records += run_frozen(
                p,
                emb,
                ytr,
                yte,
                self.num_classes,
                s.fractions,
                s.seeds,
                s.k,
                s.Cs,
                s.shots,
                s.episodes,
                s.n_boot,
                self.gain_vs,
                self.data_name,
                self.sup,
            )
        return records

    def _segmentation(self, group: str) -> list[dict]:
        s = self.s
        xtr, mtr, wl = dataset_tensors(self.train_ds, self.data_name, max_items=s.max_train, target="mask")
        xte, mte, _ = dataset_tensors(self.test_ds, self.data_name, max_items=s.max_test, target="mask")
        self.n_test = int(mte.shape[0])
        num_classes = int(max(mtr.max(), mte.max()) + 1)
        classes = getattr(self.train_ds, "classes", None)
        if classes:
            num_classes = max(num_classes, len(classes))
        self.num_classes = num_classes
        head_factory = segmentation_head_factory(self.domain_name, self.cfg, num_classes)
        return run_segmentation(
            group,
            self.encoders,
            head_factory,
            xtr,
            mtr,
            xte,
            mte.numpy(),
            wl,
            num_classes,
            s.fractions,
            s.seeds,
            s.n_boot,
            self.gain_vs,
            self.data_name,
            s.finetune_kwargs,
            ignore_background=self.background,
            sup=self.sup,
        )

    def _finetune(self, group: str) -> list[dict]:
        s = self.s
        xtr, ytr, wl = dataset_tensors(self.train_ds, self.data_name, max_items=s.max_train)
        xte, yte, _ = dataset_tensors(self.test_ds, self.data_name, max_items=s.max_test)
        ytr = check_labels(ytr, self.data_name, "training labels")
        yte = check_labels(yte, self.data_name, "test labels")
        self.n_test = yte.size
        self.num_classes = int(max(ytr.max(), yte.max()) + 1)
        return run_finetune(
            group,
            self.encoders,
            xtr,
            ytr,
            xte,
            yte,
            wl,
            self.num_classes,
            s.fractions,
            s.seeds,
            s.n_boot,
            self.gain_vs,
            self.data_name,
            s.finetune_kwargs,
            self.sup,
        )

    # ------------------------------------------------------------------------------------------ meta
    def meta(self, cache_folder) -> dict:
        s, checkpoint = self.s, self.checkpoint
        segmentation = {
            "mean_over": "classes 1.. (label id 0 is background)" if self.background else "all classes, 0 included"
        }
        return {
            "checkpoint": str(checkpoint) if isinstance(checkpoint, (str, Path)) else type(checkpoint).__name__,
            "data": self.data_name,
            "domain": self.domain_name,
            "task": self.task,
            "protocols": s.protocols,
            "fractions": s.fractions,
            "seeds": s.seeds,
            "baseline": self.baselines,
            "gain_vs": self.gain_vs,
            "compute": _compute(self.card, self.model, self.seconds, self.sup),
            "encoders": [n for n in self.encoders if "#" not in n],
            "pretraining_seeds": 1 + len(self.replicas),
            "pool": self.pools,
            **(segmentation if self.task == "segmentation" else {}),
            "n_train_pool": len(self.train_ds) if s.max_train is None else min(len(self.train_ds), s.max_train),
            "n_test": self.n_test,
            "test_split": self.split_name,
            "n_boot": s.n_boot,
            "k": s.k,
            "Cs": list(s.Cs),
            "cache": {
                "folder": None if cache_folder is None else str(cache_folder),
                "hits": self.cache.hits,
                "misses": self.cache.misses,
            },
        }


def _card_of(model) -> Card:
    """The card of a loaded model (an empty one for a model in hand without a card)."""
    card = getattr(model, "card", None)
    return card if isinstance(card, Card) else Card.from_dict(card if isinstance(card, Mapping) else None)


def _check_report_out(out, exist_ok: bool, inputs: list) -> None:
    """An earlier report in ``out`` (its ``report.json``) is replaced only with ``exist_ok=True``
    (:func:`~domainfm.io_safety.check_exists`); the embedding cache beside it is kept and reused."""
    if out is not None:
        check_exists(Path(out) / "report.json", exist_ok, inputs)


def _compute(card: Card, model, seconds: dict[str, float], sup) -> dict:
    """What each side of the comparison cost: pretraining (from the card), adaptation per protocol (every
    encoder together, the supervised baseline left out), and the supervised baseline's training."""
    enc = encoder_of(model)
    params = sum(p.numel() for p in enc.parameters()) if isinstance(enc, torch.nn.Module) else None
    return {
        "pretraining": card.compute,
        "encoder_params": params,
        "adaptation_seconds": seconds,
        "supervised": sup.compute() if sup is not None else None,
    }
