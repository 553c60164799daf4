"""The training engine: one plain, visible PyTorch loop for pretraining and fine-tuning.

bf16 autocast on CUDA (fp32 on CPU), optional ``torch.compile``, fused AdamW (CUDA and CPU), warmup +
cosine schedule, gradient accumulation and clipping, optional EMA, DDP under ``torchrun`` (gloo on
CPU), progress bar, metrics to CSV and TensorBoard, atomic checkpoints every N steps and exact resume.
A non-finite loss stops the run with a message naming the step and the last good checkpoint.

The trained ``module`` is any ``nn.Module`` whose ``forward(batch)`` returns a dict with ``loss``
(plus optional scalar metrics and ``embeddings`` for the collapse monitor). It may define
``on_step_end(step, total_steps)`` (e.g. a momentum update) and ``param_groups(weight_decay)``.

Example:
    >>> # train(objective, dataset, cfg.train, "runs/x", card)   -> Path of the last checkpoint
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from domainfm.config import TrainConfig
from domainfm.data.sample import collate_samples
from domainfm.data.sampling import epoch_batches, set_epoch
from domainfm.decisions import decide
from domainfm.display import finish_progress, progress_bar
from domainfm.errors import CheckpointError, DataError, NonFiniteLossError
from domainfm.io_safety import RunLock, clean_stale_tmp
from domainfm.memory import check_step_memory, enable_grad_checkpointing
from domainfm.ssl.monitor import collapse_metrics
from domainfm.train import fsdp
from domainfm.train.checkpoint import (
    check_run_dir,
    latest_intact,
    list_checkpoints,
    load_module_state,
    load_tensors,
    save_checkpoint,
)
from domainfm.train.distributed import DistContext, adamw_kwargs
from domainfm.train.learning import GENERIC_HINT, LearningCheck, NotLearningError
from domainfm.train.schedule import lr_at
from domainfm.utils import pick_device

log = logging.getLogger("domainfm.train")


def default_param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms, tokens, learned positions and other 1-D parameters."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(".bias") or "token" in name or "pos_embed" in name
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


class _ListBatchSampler:
    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class MetricsLogger:
    """Appends ``step,metric,value`` rows to ``metrics.csv`` and mirrors them to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool, start_step: int = 0):
        self.enabled = enabled
        self.path = run_dir / "metrics.csv"
        self.writer = None
        if not enabled:
            return
        if self.path.exists():  # a resumed run: rows logged after its checkpoint will be logged again
            with open(self.path, newline="") as f:
                rows = list(csv.reader(f))
            kept = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= start_step]
            tmp = self.path.with_name(".metrics.csv.tmp")
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows([["step", "metric", "value"], *kept])
            os.replace(tmp, self.path)
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(["step", "metric", "value"])
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard may be absent

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard not installed: CSV only
                self.writer = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in metrics.items():
            self._csv.writerow([step, k, f"{v:.6g}"])
            if self.writer is not None:
                self.writer.add_scalar(k, v, step)
        self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self.writer is not None:
                self.writer.close()


def _rng_state() -> tuple[dict, dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def _set_rng_state(tensors: dict, meta: dict) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if states and len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    if "numpy" in meta:
        n = meta["numpy"]
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "python" in meta:
        p = meta["python"]
        random.setstate((p[0], tuple(p[1]), p[2]))


def _optimizer_state(sd: dict) -> tuple[dict, dict]:
    """Flatten ``optimizer.state_dict()`` into safetensors tensors and JSON metadata."""
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_state_dict(tensors: dict, meta: dict) -> dict:
    """The ``optimizer.state_dict()`` that :func:`_optimizer_state` flattened."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def _to_device(batch: dict, device: torch.device) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif k == "views":
            out[k] = [t.to(device, non_blocking=True) for t in v]
        else:
            out[k] = v
    return out


def _check_finite(batch: dict) -> None:
    """A NaN/inf input is named by its file before it can poison the weights."""
    for key in ("image", "views"):
        tensors = batch.get(key)
        tensors = [tensors] if isinstance(tensors, torch.Tensor) else (tensors or [])
        for t in tensors:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = (~torch.isfinite(t.flatten(1))).sum(1)
                i = int(bad.argmax())
                path = (batch.get("meta") or [{}] * t.shape[0])[i].get("path")
                raise DataError(
                    path,
                    f"input has {int(bad[i])} NaN/inf values after preprocessing "
                    f"(fix or exclude this file, or add nodata handling in the domain options)",
                )


class _StopRequest:
    """SIGINT/SIGTERM while training: the first asks for a checkpoint at the end of the current step,
    a second one interrupts at once."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print(
            f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step "
            "(signal again to stop without one)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def resume_command(card: dict, run_dir: Path) -> str:
    """The command that continues an interrupted run.

    Example:
        >>> resume_command({"stage": "pretrain"}, Path("runs/x"))
        'domainfm pretrain --resume --out runs/x'
    """
    if card.get("stage") == "finetune" and card.get("parent"):
        return f"domainfm finetune {card['parent']} --config {run_dir / 'config.yaml'} --resume --out {run_dir}"
    return f"domainfm pretrain --resume --out {run_dir}"


def _min_batch(module: nn.Module) -> int:
    """Samples a training batch needs: 2 with a 1-D batch norm in training mode (one value per channel
    has no variance) or a contrastive loss (the other samples are the negatives), else 1.

    Example:
        >>> _min_batch(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))), _min_batch(nn.Linear(2, 2))
        (2, 1)
    """
    bn = any(isinstance(m, nn.BatchNorm1d) and m.training for m in module.modules())
    contrastive = "contrastive" in type(module).__name__.lower() or hasattr(module, "temperature")
    return 2 if bn or contrastive else 1


def _batch_size(batch: dict) -> int:
    return int(batch["image"].shape[0]) if "image" in batch else int(batch["views"][0].shape[0])


def train(
    module: nn.Module,
    dataset,
    tcfg: TrainConfig,
    run_dir: str | Path,
    card: dict,
    *,
    resume: bool = False,
    collate_fn: Callable = collate_samples,
    num_workers: int = 0,
    callbacks: Iterable[Callable[[int, nn.Module], dict]] = (),
    encoder_attr: str = "encoder",
) -> Path:
    """Train ``module`` on ``dataset`` for ``tcfg.steps`` optimizer steps; return the last checkpoint folder.

    ``card`` is written into each checkpoint (step, EMA and versions are added). With ``resume``
    the latest checkpoint in ``run_dir`` is loaded (weights, optimizer, step, RNG) and training
    continues exactly where it stopped. ``callbacks`` are called as ``cb(step, encoder)`` after each
    optimizer step and may return metrics to log (e.g. an online kNN probe).
    """
    run_dir = Path(run_dir)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = pick_device(tcfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    ctx = DistContext.from_env(device.type)
    if ctx.enabled and device.type == "cuda":
        device = torch.device(f"cuda:{ctx.local_rank}")
    lock = None
    if ctx.is_main:
        lock = RunLock(run_dir).acquire()  # refuses a second process training into the same folder
        clean_stale_tmp(run_dir)
    ctx.barrier()
    try:
        return _train_locked(
            module, dataset, tcfg, run_dir, card, resume, collate_fn, num_workers, callbacks, encoder_attr, device, ctx
        )
    finally:
        if lock is not None:
            lock.release_all()


def _compute_record(clock: tuple[float, float, int], step: int, device, world_size: int) -> dict:
    """What the training of this process has cost up to ``step`` (wall and process CPU seconds)."""
    wall0, cpu0, start = clock
    wall = time.perf_counter() - wall0
    return {
        "device": device.type,
        "processes": world_size,
        "steps": step - start,
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(time.process_time() - cpu0, 2),
        "gpu_seconds": round(wall * world_size, 2) if device.type == "cuda" else 0.0,
        **({"resumed_at": start} if start else {}),
    }


def _after_learning_check(learning, module, outputs, tcfg, card, ctx, device) -> None:
    """Decide whether the run learns (the objective's own signal when it has one, else the loss), record it
    in the card; a run not learning (on any rank) stops, or warns when told to go on."""
    verdict = module.learning_verdict(outputs) if hasattr(module, "learning_verdict") else None
    hint = GENERIC_HINT
    if verdict is not None:
        learning.record["flat"], hint = verdict
        learning.record["signal"] = "objective"
    flat = ctx.any_true(bool(learning.record["flat"]), device)
    learning.record["flat"] = flat
    card["learning"] = learning.record
    if not flat:
        return
    message = learning.message(hint)
    if tcfg.stop_if_not_learning:
        raise NotLearningError(message)
    if ctx.is_main:
        log.warning(message)
        print(f"domainfm: warning: {message}", file=sys.stderr, flush=True)


def _train_locked(
    module,
    dataset,
    tcfg,
    run_dir: Path,
    card: dict,
    resume: bool,
    collate_fn,
    num_workers: int,
    callbacks,
    encoder_attr: str,
    device: torch.device,
    ctx: DistContext,
) -> Path:
    use_bf16 = (tcfg.amp == "bf16") or (tcfg.amp == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    use_fsdp = tcfg.strategy == "fsdp" and ctx.enabled
    if tcfg.strategy == "fsdp" and not ctx.enabled and ctx.is_main:
        decide("strategy", "train.strategy fsdp in one process (not under torchrun): plain training, nothing sharded")
    if not use_fsdp:
        module.to(device)

    start_step = 0
    check_run_dir(run_dir, resume)
    last = None
    if resume:
        ckpts = list_checkpoints(run_dir)
        if not ckpts:
            raise CheckpointError(f"resume: no checkpoint in {run_dir} to resume from")
        if not (ckpts[-1] / "trainer_state.safetensors").is_file():
            raise CheckpointError(f"{ckpts[-1]}: has no trainer state, cannot resume exactly")
        last = latest_intact(run_dir, need_trainer_state=True)  # a damaged newest one falls back, with a warning
        if last is None:
            raise CheckpointError(f"resume: every checkpoint in {run_dir} is damaged; start a new run")
        weights = load_tensors(last)
        load_module_state(module, {k: v for k, v in weights.items() if not k.startswith("ema.")})

    user_module = module
    if use_fsdp:  # the rest of the engine trains a sharded copy; user_module gets its weights at the end
        module = fsdp.shard_copy(user_module, device, ctx.world_size, use_bf16)
    if tcfg.grad_checkpointing:
        enable_grad_checkpointing(getattr(module, encoder_attr, module))

    groups = (
        user_module.param_groups(tcfg.weight_decay)
        if hasattr(user_module, "param_groups")
        else default_param_groups(user_module, tcfg.weight_decay)
    )
    if use_fsdp:  # the caller's grouping (it may hold a closure over the caller's module), on the sharded copy
        groups = fsdp.same_params(groups, user_module, module)
    for g in groups:
        g.setdefault("lr_scale", 1.0)
    opt_kwargs = adamw_kwargs(device)  # fused AdamW on CUDA and CPU
    optimizer = torch.optim.AdamW(groups, lr=tcfg.lr, betas=(0.9, 0.95), **opt_kwargs)
    trainable = [p for g in groups for p in g["params"]]

    ema: dict[str, torch.Tensor] | None = None
    if tcfg.ema > 0:
        ema = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    if resume:
        ttensors = load_tensors(last, "trainer_state.safetensors")
        tmeta = json.loads((last / "trainer_state.json").read_text())
        osd = _optimizer_state_dict(ttensors, tmeta.get("optimizer", {}))
        if use_fsdp:
            fsdp.load_full_optimizer_state(module, optimizer, osd)
        else:
            optimizer.load_state_dict(osd)
        _set_rng_state(ttensors, tmeta.get("rng", {}))
        if ema is not None:
            for n in ema:
                if f"ema.{n}" in weights:
                    fsdp.copy_full_into(ema[n], weights[f"ema.{n}"])
        start_step = int(tmeta["step"])
        if ctx.is_main:
            log.info("resumed from %s at step %d", last, start_step)

    model_for_step = module
    if ctx.enabled and not use_fsdp:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        model_for_step = nn.parallel.DistributedDataParallel(module, **ddp_kwargs)
    if tcfg.compile:
        model_for_step = torch.compile(model_for_step)

    accum = tcfg.accum_steps
    total = tcfg.steps
    probe = dataset[0]  # fail early, with the file named, if the very first sample is bad
    batches0 = epoch_batches(dataset, 0, tcfg.batch_size, tcfg.seed, ctx.rank, ctx.world_size)
    if use_fsdp and ctx.is_main and tcfg.memory_check:
        log.info("step memory check skipped under train.strategy fsdp (the estimate assumes unsharded weights)")
    if ctx.is_main and tcfg.memory_check and batches0 and not use_fsdp:  # the real batch: small datasets give fewer
        check_step_memory(
            module,
            probe,
            max(len(b) for b in batches0),
            device,
            use_bf16=use_bf16,
            grad_checkpointing=tcfg.grad_checkpointing,
        )
    del probe
    per_epoch = len(batches0)
    if per_epoch == 0:
        raise CheckpointError(f"the dataset has {len(dataset)} samples: too few for one batch per rank")
    need = _min_batch(module)
    smallest = min(len(b) for b in batches0)
    if smallest < need:
        where = card.get("data", {}).get("path") if isinstance(card.get("data"), dict) else None
        raise DataError(
            where,
            f"a training batch would hold {smallest} sample(s) (the data gives {len(dataset)}), but "
            f"this model needs >= {need} per batch (batch-norm statistics / contrastive negatives); "
            f"add data (more files, tiles or chips per item) or raise train.batch_size",
        )
    micro = start_step * accum
    learning = LearningCheck(total, tcfg.warmup_steps, tcfg.flat_tolerance, start=start_step)
    card["learning"] = learning.record

    logger = MetricsLogger(run_dir, tcfg.tensorboard, ctx.is_main, start_step)
    progress = None
    if tcfg.progress and ctx.is_main:
        progress = progress_bar(total=total, initial=start_step, desc="train", dynamic_ncols=True, leave=True)

    clock = (time.perf_counter(), time.process_time(), start_step)

    def save(step: int) -> Path | None:
        """Write a checkpoint from rank 0; under FSDP every rank calls it (the full tensors are gathered)."""
        card["compute"] = _compute_record(clock, step, device, ctx.world_size)
        tensors = fsdp.full_state(module) if use_fsdp else dict(module.state_dict())
        if ema is not None:
            tensors.update({f"ema.{n}": fsdp.full_tensor(t) for n, t in ema.items()})
        osd = fsdp.full_optimizer_state(module, optimizer) if use_fsdp else optimizer.state_dict()
        if not ctx.is_main:
            return None
        otensors, ometa = _optimizer_state(osd)
        rtensors, rmeta = _rng_state()
        return save_checkpoint(
            run_dir,
            step,
            tensors,
            {**card, "ema": ema is not None},
            {**otensors, **rtensors},
            {"step": step, "optimizer": ometa, "rng": rmeta},
            keep_last=tcfg.keep_last,
        )

    last_ckpt = last if (resume and ctx.is_main) else None
    step = start_step
    module.train()
    t_last, seen = time.perf_counter(), 0
    loader_iter = None
    epoch = -1
    stop = _StopRequest()
    try:
        stop.__enter__()
        while step < total:
            lr = lr_at(step, tcfg.lr, total, tcfg.warmup_steps, tcfg.min_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            outputs = {}
            loss_sum = 0.0
            for k in range(accum):
                want_epoch, skip = divmod(micro, per_epoch)
                if want_epoch != epoch or loader_iter is None:
                    epoch = want_epoch
                    set_epoch(dataset, epoch)
                    batches = epoch_batches(dataset, epoch, tcfg.batch_size, tcfg.seed, ctx.rank, ctx.world_size)
                    loader = DataLoader(
                        dataset,
                        batch_sampler=_ListBatchSampler(batches[skip:]),
                        collate_fn=collate_fn,
                        num_workers=num_workers,
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(tcfg.seed * 7919 + epoch),
                    )
                    loader_iter = iter(loader)
                batch = next(loader_iter)
                micro += 1
                if micro % per_epoch == 0:
                    loader_iter = None
                _check_finite(batch)
                batch = _to_device(batch, device)
                # randomness inside the step (masking, dropout) is a function of the step alone: exact resume
                torch.manual_seed(tcfg.seed * 1_000_003 + (step * accum + k) * 7919 + ctx.rank)
                fsdp.set_grad_sync(module, k == accum - 1)  # FSDP2's no_sync (the context below is DDP's)
                ddp_sync = k == accum - 1 or not ctx.enabled or use_fsdp
                sync = contextlib.nullcontext() if ddp_sync else model_for_step.no_sync()
                with sync, torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    outputs = model_for_step(batch)
                    loss = outputs["loss"] / accum
                value = float(loss.detach()) * accum
                if ctx.any_true(not math.isfinite(value), device):
                    where = (
                        f"; the last good checkpoint is {last_ckpt}" if last_ckpt else "; no checkpoint was written yet"
                    )
                    raise NonFiniteLossError(
                        f"loss became {value} at step {step + 1}{where} "
                        f"(try a lower train.lr, train.clip_grad, or check the data for NaNs)"
                    )
                loss.backward()
                loss_sum += value / accum
                seen += _batch_size(batch) * ctx.world_size
            if tcfg.clip_grad:
                grad_norm = float(fsdp.full_tensor(torch.nn.utils.clip_grad_norm_(trainable, tcfg.clip_grad)))
            else:
                grad_norm = float("nan")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if hasattr(module, "on_step_end"):
                module.on_step_end(step, total)
            if learning.update(step, loss_sum) is not None:
                _after_learning_check(learning, user_module, outputs, tcfg, card, ctx, device)
            if ema is not None:
                with torch.no_grad():
                    named = dict(module.named_parameters())
                    for n, t in ema.items():
                        t.mul_(tcfg.ema).add_(named[n].detach(), alpha=1 - tcfg.ema)
            extra: dict[str, float] = {}
            encoder = getattr(module, encoder_attr, module)
            with fsdp.gathered(module, bool(callbacks)):  # FSDP: whole weights for the encoder calls of a probe
                for cb in callbacks:
                    extra.update(cb(step, encoder) or {})
            if ctx.is_main and (step % tcfg.log_every == 0 or step == total or extra):
                now = time.perf_counter()
                metrics = {
                    "loss": loss_sum,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "samples_per_s": seen / max(now - t_last, 1e-9),
                }
                for key, val in outputs.items():
                    if key != "loss" and isinstance(val, torch.Tensor) and val.ndim == 0:
                        metrics[key] = float(val)
                if isinstance(outputs.get("embeddings"), torch.Tensor) and outputs["embeddings"].shape[0] > 1:
                    metrics.update(collapse_metrics(outputs["embeddings"]))
                metrics.update(extra)
                logger.log(step, metrics)
                t_last, seen = now, 0
                if progress is not None:
                    progress.set_postfix({k: f"{metrics[k]:.4g}" for k in ("loss", "embed_std") if k in metrics})
            if progress is not None:
                progress.update(1)
            stopping = ctx.any_true(stop.signal is not None, device)
            if step % tcfg.ckpt_every == 0 or step == total or stopping:
                if ctx.is_main or use_fsdp:
                    saved = save(step)
                    last_ckpt = saved if ctx.is_main else last_ckpt
                ctx.barrier()
            if stopping:
                if ctx.is_main:
                    print(
                        f"interrupted at step {step} of {total}: checkpoint saved to {last_ckpt}\n"
                        f"resume with: {resume_command(card, run_dir)}",
                        file=sys.stderr,
                        flush=True,
                    )
                raise KeyboardInterrupt
        if use_fsdp:
            fsdp.copy_back(module, user_module, device)
    finally:
        stop.__exit__()
        if progress is not None:
            finish_progress(progress)  # a notebook keeps the bar's final state as text
        logger.close()
        ctx.close()
    if last_ckpt is None:
        last_ckpt = list_checkpoints(run_dir)[-1]
    return last_ckpt
