"""The notebook surface: ``pretrain``, ``finetune``, ``load``, ``embed``, ``predict``, ``evaluate``, ``demo``.

Example:
    >>> import domainfm, tempfile
    >>> out = tempfile.mkdtemp()
    >>> ckpt = domainfm.pretrain({"domain": "synthetic", "out": out, "data": {"img_size": 32},
    ...     "model": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
    ...     "train": {"steps": 2, "batch_size": 4, "progress": False, "tensorboard": False}})
    >>> model = domainfm.load(ckpt)
    >>> import torch; model.embed(torch.rand(2, 1, 32, 32)).shape
    torch.Size([2, 32])
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from domainfm.config import Config, load_config, save_config
from domainfm.data.sample import collate_samples
from domainfm.errors import CheckpointError, ConfigError, DataError
from domainfm.models.encoder import build_encoder
from domainfm.registry import get_domain
from domainfm.ssl import build_objective, pretrain_views
from domainfm.train.checkpoint import _write_json_atomic, load_card, load_module_state, load_tensors, resolve_checkpoint
from domainfm.train.engine import train

log = logging.getLogger("domainfm")


class FoundationModel(nn.Module):
    """A loaded encoder (+ optional head) that carries its card and the exact preprocessing.

    Example:
        >>> # model = domainfm.load("runs/ct/ckpt-0001000")
        >>> # x = model.preprocess("scan.nii.gz")[None]; z = model.embed(x)
    """

    def __init__(self, encoder: nn.Module, card: dict, head: nn.Module | None = None, path: Path | None = None):
        super().__init__()
        self.encoder, self.head, self.card, self.path = encoder, head, card, path
        self._preprocess: Callable | None = None

    @property
    def domain(self):
        return get_domain(self.card["domain"])

    @property
    def preprocess(self) -> Callable[[Any], torch.Tensor]:
        """The domain's preprocessing rebuilt from the card (file or array -> model-ready tensor)."""
        if self._preprocess is None:
            self._preprocess = self.domain.preprocessor(self.card)
        return self._preprocess

    def _wavelengths(self, wavelengths):
        if wavelengths is None and self.encoder.patch_embed.kind == "wavelength":
            wavelengths = (self.card.get("preprocessing") or {}).get("wavelengths")
        return wavelengths

    def features(self, x: torch.Tensor, wavelengths=None, layers=None) -> dict:
        self.encoder.check_input(x)
        return self.encoder.forward_features(x, wavelengths=self._wavelengths(wavelengths), layers=layers)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, wavelengths=None) -> torch.Tensor:
        """One vector per input (``B x E``), without gradients."""
        self.encoder.check_input(x)
        return self.encoder.embed(x, wavelengths=self._wavelengths(wavelengths))

    def logits(self, x: torch.Tensor, wavelengths=None) -> torch.Tensor:
        """Head output for a batch (a fine-tuned checkpoint is needed)."""
        if self.head is None:
            raise CheckpointError(f"{self.path}: this checkpoint has no head (it was not fine-tuned); "
                                  "run `domainfm finetune` first")
        feats = self.features(x, wavelengths, layers=getattr(self.head, "layers", None))
        return self.head(feats)

    def forward(self, x: torch.Tensor, wavelengths=None) -> torch.Tensor:
        return self.logits(x, wavelengths) if self.head is not None else self.encoder(x, wavelengths=self._wavelengths(wavelengths))


def config_from_card(card: dict, data: str | Path | None = None, overrides: Iterable[str] = (),
                     updates: dict | None = None, check_paths: bool = True) -> Config:
    """The run config stored in a card, with a new data path and overrides applied."""
    upd = {k: dict(v) if isinstance(v, dict) else v for k, v in (updates or {}).items()}
    if data is not None:
        upd.setdefault("data", {})["path"] = str(data)
    return load_config(card["config"], overrides=list(overrides), updates=upd, check_paths=check_paths)


def build_card(cfg: Config, domain, encoder, dataset, stage: str) -> dict:
    return {"domain": cfg.domain, "stage": stage, "encoder": encoder.config,
            "objective": dataclasses.asdict(cfg.objective),
            "preprocessing": domain.preprocessing(cfg, dataset), "config": cfg.to_dict(),
            "data": {"path": cfg.data.path, "num_samples": len(dataset)},
            "task": None, "num_classes": None, "classes": None,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _encoder_for(cfg: Config, domain, dataset) -> nn.Module:
    kw = domain.encoder_kwargs(cfg, dataset)
    return build_encoder(cfg.model.name, depth=cfg.model.depth, embed_dim=cfg.model.embed_dim,
                         num_heads=cfg.model.num_heads, drop_path_rate=cfg.model.drop_path_rate,
                         class_token=cfg.model.class_token, num_registers=cfg.model.num_registers,
                         global_pool=cfg.model.global_pool, **kw)


def _is_main() -> bool:
    import os
    return int(os.environ.get("RANK", "0")) == 0


def pretrain(config: str | Path | dict | Config, overrides: Iterable[str] = (), resume: bool = False,
             callbacks: Iterable[Callable] = ()) -> Path:
    """Pretrain an encoder with self-supervision; return the last checkpoint folder.

    ``config`` is a YAML path, a dict or a :class:`~domainfm.config.Config`; ``overrides`` are
    ``key=value`` strings. With ``resume`` the run continues from its latest checkpoint.

    Example:
        >>> # domainfm.pretrain("configs/medical/ct_mae_3d.yaml", overrides=["train.steps=200"])
    """
    cfg = load_config(config, overrides=list(overrides))
    domain = get_domain(cfg.domain)
    dataset = domain.dataset(cfg, "pretrain")
    if len(dataset) == 0:
        raise DataError(cfg.data.path, "no samples found for pretraining")
    torch.manual_seed(cfg.train.seed)  # the same config gives the same initial weights
    encoder = _encoder_for(cfg, domain, dataset)
    objective = build_objective(encoder, cfg.objective)
    card = build_card(cfg, domain, encoder, dataset, "pretrain")
    train_set = pretrain_views(dataset, domain, cfg)  # multi-crop (dino), two views (contrastive) or as is
    run_dir = Path(cfg.out)
    if resume:
        _check_resume_matches(run_dir, cfg)
    cbs = list(callbacks)
    if cfg.train.probe_every:
        probe = _online_probe(cfg, domain)
        if probe is not None:
            cbs.append(probe)
    _start_run_dir(run_dir, cfg, resume)
    ckpt = train(objective, train_set, cfg.train, run_dir, card, resume=resume, num_workers=cfg.data.num_workers,
                 callbacks=cbs)
    if _is_main() and hasattr(objective, "reconstruct"):
        _save_reconstruction(objective, dataset, run_dir / "reconstruction.png")
    return ckpt


def _start_run_dir(run_dir: Path, cfg: Config, resume: bool) -> None:
    """Refuse to overwrite a run before anything is written, then record the config the run uses."""
    from domainfm.train.checkpoint import check_run_dir
    check_run_dir(run_dir, resume)
    if _is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")


def _check_resume_matches(run_dir: Path, cfg: Config) -> None:
    """Resuming with another model, objective or domain than the run's would load the wrong weights."""
    from domainfm.train.checkpoint import list_checkpoints
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return  # the engine says there is nothing to resume from
    before = load_card(ckpts[-1])["config"]
    now = cfg.to_dict()
    diffs = [f"domain: {before['domain']!r} in the run, {now['domain']!r} now"] if before["domain"] != now["domain"] else []
    for section in ("model", "objective"):
        for key, value in now[section].items():
            if before.get(section, {}).get(key) != value:
                diffs.append(f"{section}.{key}: {before[section].get(key)!r} in the run, {value!r} now")
    if diffs:
        raise ConfigError(f"{run_dir}: --resume with a different setup than the run ({'; '.join(diffs[:3])}); "
                          "resume with the run's config (`domainfm pretrain --resume --out RUN` reads it) or use a new --out")


def _online_probe(cfg: Config, domain):
    """kNN probe on labelled data (``data.val_path``, else the labelled splits of ``data.path``)."""
    from domainfm.eval.online import OnlineKNNProbe
    vcfg = load_config(cfg, updates={"data": {"path": cfg.data.val_path}}) if cfg.data.val_path else cfg
    try:
        return OnlineKNNProbe(domain.dataset(vcfg, "train"), domain.dataset(vcfg, "val"), every=cfg.train.probe_every)
    except (DataError, NotImplementedError, KeyError) as exc:
        log.warning("online probe disabled: no labelled train/val splits (%s)", exc)
        return None


@torch.no_grad()
def _save_reconstruction(objective, dataset, path: Path, n: int = 4) -> Path | None:
    from domainfm.viz import save_reconstruction_png
    samples = [dataset[i] for i in range(min(n, len(dataset)))]
    batch = collate_samples(samples)
    device = next(objective.parameters()).device
    batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    was_training = objective.training
    objective.eval()
    with torch.random.fork_rng(devices=[]):  # a fixed mask for the picture, without touching the caller's RNG
        torch.manual_seed(0)
        masked, recon, original = objective.reconstruct(batch)
    objective.train(was_training)
    return save_reconstruction_png(masked, recon, original, path)


def load(path: str | Path, device: str | torch.device = "cpu") -> FoundationModel:
    """Rebuild a model (encoder, head if fine-tuned, preprocessing) from a checkpoint or run folder.

    Weights come from safetensors, the architecture and preprocessing from the JSON card: nothing
    is unpickled.

    Example:
        >>> # model = domainfm.load("runs/quickstart")   # a run folder: its latest checkpoint
    """
    ckpt = resolve_checkpoint(path)
    card = load_card(ckpt)
    tensors = load_tensors(ckpt)
    try:
        encoder = build_encoder(**card["encoder"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{ckpt}/card.json: the encoder description is incomplete ({exc})") from None
    lora = card.get("lora")
    if lora:
        from domainfm.models.lora import apply_lora
        apply_lora(encoder, rank=lora["rank"], alpha=lora["alpha"])
    prefix = "ema.encoder." if card.get("ema") and any(k.startswith("ema.encoder.") for k in tensors) else "encoder."
    load_module_state(encoder, tensors, prefix=prefix)
    if lora:
        from domainfm.models.lora import merge_lora
        merge_lora(encoder)
    head = None
    if card.get("task"):
        domain = get_domain(card["domain"])
        cfg = config_from_card(card, check_paths=False)
        head = domain.head(card["task"], encoder, int(card["num_classes"]), cfg)
        hprefix = "ema.head." if prefix.startswith("ema.") else "head."
        load_module_state(head, tensors, prefix=hprefix)
    model = FoundationModel(encoder, card, head, ckpt).to(device)
    model.eval()
    return model


def _infer_num_classes(dataset, task: str) -> tuple[int, list | None]:
    """Classes from the dataset's ``classes`` (image labels) or ``mask_classes`` (segmentation label
    names, background first); otherwise from the largest label found in the data."""
    names = getattr(dataset, "mask_classes" if task == "segmentation" else "classes", None)
    if names:
        return len(names), list(names)
    top = 0
    for i in range(len(dataset)):
        s = dataset[i]
        if task == "segmentation":
            top = max(top, int(torch.as_tensor(s["mask"]).max()))
        elif task == "multilabel":
            return int(torch.as_tensor(s["label"]).numel()), None
        else:
            top = max(top, int(s["label"]))
    return top + 1, None


def finetune(checkpoint: str | Path, task: str | None = None, data: str | Path | None = None,
             config: str | Path | dict | None = None, overrides: Iterable[str] = (), resume: bool = False,
             out: str | Path | None = None, **kwargs) -> Path:
    """Fine-tune a pretrained checkpoint for a task; return the fine-tuned checkpoint folder.

    The run starts from the pretraining config stored in the card; ``config`` (YAML or dict) and
    ``overrides`` change it. Tasks: ``classification``, ``multilabel``, ``segmentation`` (and what
    a domain adds, e.g. ``mil`` for pathology).

    Example:
        >>> # domainfm.finetune("runs/ct", task="segmentation", data="labels.csv", overrides=["train.steps=500"])
    """
    base_ckpt = resolve_checkpoint(checkpoint)
    card = load_card(base_ckpt)
    updates: dict = {}
    if config is not None:
        extra = load_config(config, check_paths=False).to_dict() if not isinstance(config, dict) else config
        updates.update(extra)
    if task:
        updates.setdefault("finetune", {})["task"] = task
    if out is not None:
        updates["out"] = str(out)
    elif "out" not in updates:
        updates["out"] = str(Path(card["config"]["out"]).with_name(Path(card["config"]["out"]).name + "-finetune"))
    cfg = config_from_card(card, data=data, overrides=overrides, updates=updates)
    domain = get_domain(cfg.domain)
    custom = domain.finetune(cfg, base_ckpt, resume=resume, **kwargs)
    if custom is not None:
        return custom
    task = cfg.finetune.task
    base = load(base_ckpt)
    encoder = base.encoder.train()
    train_set = domain.dataset(cfg, "train")
    if len(train_set) == 0:
        raise DataError(cfg.data.path, "no labelled samples found for fine-tuning")
    first = train_set[0]
    needed = "mask" if task == "segmentation" else "label"
    if needed not in first:
        where = (first.get("meta") or {}).get("path") or cfg.data.path
        raise DataError(where, f"the {task} task needs a '{needed}' for every sample, and this data has none "
                               f"(give labelled data: class subfolders or a manifest with a "
                               f"{'mask' if needed == 'mask' else 'label'} column)")
    num_classes, classes = _infer_num_classes(train_set, task)
    if cfg.finetune.num_classes:
        num_classes = cfg.finetune.num_classes
    if task == "classification" and num_classes < 2:
        raise DataError(cfg.data.path, f"classification needs at least 2 classes, found {num_classes}")
    torch.manual_seed(cfg.train.seed)
    head = domain.head(task, encoder, num_classes, cfg)
    if cfg.finetune.lora_rank:
        from domainfm.models.lora import apply_lora
        apply_lora(encoder, rank=cfg.finetune.lora_rank, alpha=cfg.finetune.lora_alpha)
    elif cfg.finetune.freeze_encoder:
        for p in encoder.parameters():
            p.requires_grad_(False)
    from domainfm.heads.task import TaskModel
    model = TaskModel(encoder, head, task, layer_decay=cfg.finetune.layer_decay)
    card_ft = {**card, "stage": "finetune", "task": task, "num_classes": num_classes, "classes": classes,
               "parent": str(base_ckpt), "config": cfg.to_dict(), "ema": False,
               "preprocessing": domain.preprocessing(cfg, train_set),
               "lora": {"rank": cfg.finetune.lora_rank, "alpha": cfg.finetune.lora_alpha} if cfg.finetune.lora_rank else None,
               "data": {"path": cfg.data.path, "num_samples": len(train_set)}}
    run_dir = Path(cfg.out)
    _start_run_dir(run_dir, cfg, resume)
    ckpt = train(model, train_set, cfg.train, run_dir, card_ft, resume=resume, num_workers=cfg.data.num_workers)
    if _is_main():
        try:
            val_set = domain.dataset(cfg, "val")
        except (NotImplementedError, DataError) as exc:
            log.info("no validation split (%s)", exc)
            val_set = None
        metrics = {}
        if val_set is not None and len(val_set):
            metrics = evaluate_task(model, val_set, task, num_classes, cfg.train.batch_size)
        from domainfm.domain import Domain
        extra = domain.validate(load(ckpt), cfg) if type(domain).validate is not Domain.validate else None
        if extra:
            metrics.update({k: v for k, v in extra.items() if isinstance(v, (int, float))})
        if metrics:
            (run_dir / "val_metrics.json").write_text(json.dumps(metrics, indent=2))
            card_path = ckpt / "card.json"
            _write_json_atomic(card_path, {**json.loads(card_path.read_text()), "val_metrics": metrics})
            print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return ckpt


def _batches_by_band_set(dataset, batch_size: int):
    """Consecutive batches of samples; a change of band set (wavelengths) starts a new batch."""
    batch, key = [], None
    for i in range(len(dataset)):
        s = dataset[i]
        k = tuple(s.get("wavelengths") or ())
        if batch and (k != key or len(batch) == batch_size):
            yield collate_samples(batch)
            batch = []
        batch.append(s)
        key = k
    if batch:
        yield collate_samples(batch)


@torch.no_grad()
def evaluate_task(model: nn.Module, dataset, task: str, num_classes: int, batch_size: int = 16) -> dict[str, float]:
    """Accuracy / balanced accuracy (classification) or Dice / IoU over foreground classes
    (segmentation; mask pixels < 0 are unlabelled and not counted)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, targets = [], []
    inter = torch.zeros(num_classes)
    union = torch.zeros(num_classes)
    sums = torch.zeros(num_classes)
    for batch in _batches_by_band_set(dataset, batch_size):
        logits = model.logits(batch["image"].to(device), wavelengths=batch.get("wavelengths")).float().cpu()
        if task == "segmentation":
            y = batch["mask"].long()
            y = y[:, 0] if y.ndim == logits.ndim else y
            p = logits.argmax(1)
            valid = y >= 0
            for c in range(num_classes):
                pc, yc = (p == c) & valid, y == c
                inter[c] += (pc & yc).sum()
                union[c] += (pc | yc).sum()
                sums[c] += pc.sum() + yc.sum()
        else:
            preds.append(logits)
            targets.append(batch["label"])
    model.train(was)
    if task == "segmentation":
        fg = [c for c in range(1, num_classes) if sums[c] > 0] or [0]
        dice = torch.stack([2 * inter[c] / sums[c].clamp_min(1) for c in fg]).mean()
        iou = torch.stack([inter[c] / union[c].clamp_min(1) for c in fg]).mean()
        return {"dice": float(dice), "miou": float(iou)}
    logits, y = torch.cat(preds), torch.cat(targets)
    if task == "multilabel":
        return {"accuracy": float(((logits > 0).float() == y.float()).float().mean())}
    p = logits.argmax(1)
    y = y.long().reshape(-1)
    recalls = [float((p[y == c] == c).float().mean()) for c in range(num_classes) if (y == c).any()]
    return {"accuracy": float((p == y).float().mean()), "balanced_accuracy": float(np.mean(recalls))}


def _resolve_model(model_or_path) -> FoundationModel:
    return model_or_path if isinstance(model_or_path, FoundationModel) else load(model_or_path)


def embed(checkpoint, data: str | Path, out: str | Path, **kwargs) -> Path:
    """Embed every file/sample of ``data`` with a checkpoint; the domain decides the output layout."""
    model = _resolve_model(checkpoint)
    return model.domain.embed(model, data, out, **kwargs)


def predict(checkpoint, input: str | Path, out: str | Path, **kwargs) -> Path:
    """Predict on a whole file (volume, scene, slide) and write it back in the domain's format."""
    model = _resolve_model(checkpoint)
    return model.domain.predict(model, input, out, **kwargs)


@torch.no_grad()
def _embed_all(model: FoundationModel, dataset, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Embeddings (N x E), labels (if any) and source paths of a dataset of samples."""
    feats, labels, paths = [], [], []
    device = next(model.parameters()).device
    for start in range(0, len(dataset), batch_size):
        batch = collate_samples([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
        feats.append(model.embed(batch["image"].to(device), wavelengths=batch.get("wavelengths")).float().cpu().numpy())
        if "label" in batch:
            labels.append(batch["label"].numpy())
        paths.extend(str(m.get("path")) for m in batch["meta"])
    out = {"embeddings": np.concatenate(feats) if feats else np.zeros((0, model.encoder.embed_dim), np.float32),
           "paths": np.asarray(paths)}
    if labels:
        out["labels"] = np.concatenate(labels)
        if len(out["labels"]) != len(out["embeddings"]):
            raise DataError(None, f"only {len(out['labels'])} of {len(out['embeddings'])} samples have labels; "
                                  "label all samples or none")
    return out


def embed_dataset_to_file(model: FoundationModel, domain, data, out, batch_size: int = 32, split: str = "embed") -> Path:
    """Default ``Domain.embed``: one embedding per sample of ``data`` into ``.npz`` (or ``.h5``)."""
    cfg = config_from_card(model.card, data=data)
    dataset = domain.dataset(cfg, split)
    arrays = _embed_all(model, dataset, batch_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix in (".h5", ".hdf5"):
        import h5py
        with h5py.File(tmp, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=v.astype("S") if v.dtype.kind == "U" else v)
    else:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    tmp.replace(out)
    return out


def evaluate(checkpoint, data=None, protocol: str = "linear", **kwargs):
    """Compare a checkpoint against a random-init baseline; see :func:`domainfm.eval.evaluate`."""
    from domainfm.eval import evaluate as _evaluate
    return _evaluate(checkpoint, data=data, protocol=protocol, **kwargs)


_DEMO_MARKER = ".domainfm-demo"


def demo(domain: str = "synthetic", out: str | Path = "demo_out", quick: bool = False) -> dict:
    """Run a domain's end-to-end demo (pretrain, probe/fine-tune, figures) and return the figures.

    The demo owns ``out``: a folder left by an earlier demo is replaced; any other non-empty folder
    is refused, so a demo never deletes a user's files.
    """
    import shutil
    out = Path(out)
    plugin = get_domain(domain)
    if out.exists() and any(out.iterdir()):
        if not (out / _DEMO_MARKER).is_file():
            raise ConfigError(f"{out} is not empty and was not written by a demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _DEMO_MARKER).write_text(f"{domain}\n")
    return plugin.demo(out, quick=quick)
