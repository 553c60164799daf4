"""The training engine: one plain, visible PyTorch loop for pretraining and fine-tuning.

bf16 autocast on CUDA (fp32 on CPU), optional ``torch.compile``, fused AdamW (CUDA and CPU), warmup +
cosine schedule, gradient accumulation and clipping, optional EMA, DDP under ``torchrun`` (gloo on
CPU), progress bar, metrics to CSV and TensorBoard, atomic checkpoints every N steps and exact resume.
A non-finite loss stops the run with a message naming the step and the last good checkpoint.
The optimiser step and the loop over steps are :mod:`domainfm.train.loop` (evaluation's fine-tuning
runs the same); the engine adds the run around them: data order, resume, checkpoints, logging, learning
checks and stop signals.

The trained ``module`` is any ``nn.Module`` whose ``forward(batch)`` returns a dict with ``loss``
(plus optional scalar metrics and ``embeddings`` for the collapse monitor). It may define
``on_step_end(step, total_steps)`` (e.g. a momentum update), ``param_groups(weight_decay)`` and
``min_batch`` (samples a batch needs, e.g. 2 when the other samples are a contrastive loss's negatives).

Example:
    >>> # train(objective, dataset, cfg.train, "runs/x", card)   -> Path of the last checkpoint
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from domainfm.config import TrainConfig
from domainfm.data.sample import collate_samples
from domainfm.data.sampling import epoch_batches
from domainfm.decisions import decide
from domainfm.display import finish_progress, progress_bar
from domainfm.errors import CheckpointError, DataError, NonFiniteLossError
from domainfm.io_safety import RunLock, clean_stale_tmp
from domainfm.memory import check_step_memory, enable_grad_checkpointing
from domainfm.ssl.monitor import collapse_metrics
from domainfm.train import fsdp
from domainfm.train.batches import RunBatches, batch_size, check_finite, to_device
from domainfm.train.checkpoint import (
    check_run_dir,
    latest_intact,
    list_checkpoints,
    load_module_state,
    load_tensors,
    save_checkpoint,
)
from domainfm.train.distributed import DistContext, adamw_kwargs
from domainfm.train.layer_decay import pretraining_groups
from domainfm.train.learning import GENERIC_HINT, LearningCheck, NotLearningError
from domainfm.train.loop import Stepper, StepResult, fit
from domainfm.train.metrics_logger import MetricsLogger
from domainfm.train.schedule import lr_at
from domainfm.train.state import optimizer_state, optimizer_state_dict, rng_state, set_rng_state
from domainfm.utils import pick_device

log = logging.getLogger("domainfm.train")


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
    has no variance), at least the module's own ``min_batch`` (2 for a contrastive loss), else 1.

    Example:
        >>> _min_batch(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))), _min_batch(nn.Linear(2, 2))
        (2, 1)
    """
    bn = any(isinstance(m, nn.BatchNorm1d) and m.training for m in module.modules())
    return max(2 if bn else 1, int(getattr(module, "min_batch", 1)))


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
    run = _Run(
        module=module,
        dataset=dataset,
        tcfg=tcfg,
        run_dir=run_dir,
        card=card,
        device=device,
        ctx=ctx,
        encoder_attr=encoder_attr,
    )
    run.prepare(resume)
    return run.loop(collate_fn=collate_fn, num_workers=num_workers, callbacks=tuple(callbacks), resume=resume)


class _Run:
    """One training run, step by step: :meth:`prepare` (precision, resume, optimiser, the first batches'
    checks), then :meth:`loop` (each optimiser step: micro-batches, update, learning check, EMA, callbacks,
    log, checkpoint)."""

    def __init__(self, *, module, dataset, tcfg, run_dir: Path, card: dict, device, ctx: DistContext, encoder_attr):
        self.user_module = self.module = module
        self.dataset, self.tcfg, self.run_dir, self.card = dataset, tcfg, run_dir, card
        self.device, self.ctx, self.encoder_attr = device, ctx, encoder_attr
        self.start_step = 0
        self.last: Path | None = None
        self.ema: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------------------------------ prepare
    def prepare(self, resume: bool) -> None:
        self._precision()
        if not self.use_fsdp:
            self.module.to(self.device)
        check_run_dir(self.run_dir, resume)
        weights = self._resume_weights() if resume else None
        if self.use_fsdp:  # the rest trains a sharded copy; user_module gets its weights at the end
            self.module = fsdp.shard_copy(self.user_module, self.device, self.ctx.world_size, self.use_bf16)
        if self.tcfg.grad_checkpointing:
            enable_grad_checkpointing(getattr(self.module, self.encoder_attr, self.module))
        self._optimizer()
        if self.tcfg.ema > 0:
            self.ema = {n: p.detach().clone() for n, p in self.module.named_parameters() if p.requires_grad}
        if resume:
            self._resume_trainer_state(weights)
        self.model_for_step = self._step_model()
        self.per_epoch = self._check_first_batches()

    def _precision(self) -> None:
        tcfg, device, ctx = self.tcfg, self.device, self.ctx
        self.use_bf16 = (tcfg.amp == "bf16") or (tcfg.amp == "auto" and device.type == "cuda")
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.use_fsdp = tcfg.strategy == "fsdp" and ctx.enabled
        if tcfg.strategy == "fsdp" and not ctx.enabled and ctx.is_main:
            decide(
                "strategy", "train.strategy fsdp in one process (not under torchrun): plain training, nothing sharded"
            )

    def _resume_weights(self) -> dict:
        """The newest intact checkpoint's weights, loaded into the module (a damaged newest one falls back,
        with a warning); its trainer state is read by :meth:`_resume_trainer_state`."""
        run_dir = self.run_dir
        ckpts = list_checkpoints(run_dir)
        if not ckpts:
            raise CheckpointError(f"resume: no checkpoint in {run_dir} to resume from")
        if not (ckpts[-1] / "trainer_state.safetensors").is_file():
            raise CheckpointError(f"{ckpts[-1]}: has no trainer state, cannot resume exactly")
        self.last = latest_intact(run_dir, need_trainer_state=True)
        if self.last is None:
            raise CheckpointError(f"resume: every checkpoint in {run_dir} is damaged; start a new run")
        weights = load_tensors(self.last)
        load_module_state(self.module, {k: v for k, v in weights.items() if not k.startswith("ema.")})
        return weights

    def _optimizer(self) -> None:
        tcfg, user_module = self.tcfg, self.user_module
        groups = pretraining_groups(user_module, tcfg.weight_decay, tcfg.layer_decay)
        if self.use_fsdp:  # the caller's grouping (it may close over the caller's module), on the sharded copy
            groups = fsdp.same_params(groups, user_module, self.module)
        for g in groups:
            g.setdefault("lr_scale", 1.0)
        opt_kwargs = adamw_kwargs(self.device)  # fused AdamW on CUDA and CPU
        self.optimizer = torch.optim.AdamW(groups, lr=tcfg.lr, betas=(0.9, 0.95), **opt_kwargs)
        self.trainable = [p for g in groups for p in g["params"]]

    def _resume_trainer_state(self, weights: dict) -> None:
        """Optimiser, RNG, EMA and step of the checkpoint resumed from."""
        ttensors = load_tensors(self.last, "trainer_state.safetensors")
        tmeta = json.loads((self.last / "trainer_state.json").read_text())
        osd = optimizer_state_dict(ttensors, tmeta.get("optimizer", {}))
        if self.use_fsdp:
            fsdp.load_full_optimizer_state(self.module, self.optimizer, osd)
        else:
            self.optimizer.load_state_dict(osd)
        set_rng_state(ttensors, tmeta.get("rng", {}))
        if self.ema is not None:
            for n in self.ema:
                if f"ema.{n}" in weights:
                    fsdp.copy_full_into(self.ema[n], weights[f"ema.{n}"])
        self.start_step = int(tmeta["step"])
        if self.ctx.is_main:
            log.info("resumed from %s at step %d", self.last, self.start_step)

    def _step_model(self):
        """What a step calls: the module, under DDP when distributed (FSDP shards it itself), compiled on request."""
        model = self.module
        if self.ctx.enabled and not self.use_fsdp:
            ddp_kwargs = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            model = nn.parallel.DistributedDataParallel(self.module, **ddp_kwargs)
        return torch.compile(model) if self.tcfg.compile else model

    def _check_first_batches(self) -> int:
        """Batches per epoch, after the checks that fail early: the first sample (named if bad), the step's
        memory at the real batch size, and batches large enough for the model (batch norm, negatives)."""
        tcfg, ctx, dataset = self.tcfg, self.ctx, self.dataset
        probe = dataset[0]  # fail early, with the file named, if the very first sample is bad
        batches0 = epoch_batches(dataset, 0, tcfg.batch_size, tcfg.seed, ctx.rank, ctx.world_size)
        if self.use_fsdp and ctx.is_main and tcfg.memory_check:
            log.info("step memory check skipped under train.strategy fsdp (the estimate assumes unsharded weights)")
        if ctx.is_main and tcfg.memory_check and batches0 and not self.use_fsdp:  # small datasets give fewer
            check_step_memory(
                self.module,
                probe,
                max(len(b) for b in batches0),
                self.device,
                use_bf16=self.use_bf16,
                grad_checkpointing=tcfg.grad_checkpointing,
            )
        if not batches0:
            raise CheckpointError(f"the dataset has {len(dataset)} samples: too few for one batch per rank")
        need = _min_batch(self.module)
        smallest = min(len(b) for b in batches0)
        if smallest < need:
            where = self.card.get("data", {}).get("path") if isinstance(self.card.get("data"), dict) else None
            raise DataError(
                where,
                f"a training batch would hold {smallest} sample(s) (the data gives {len(dataset)}), but "
                f"this model needs >= {need} per batch (batch-norm statistics / contrastive negatives); "
                f"add data (more files, tiles or chips per item) or raise train.batch_size",
            )
        return len(batches0)

    # ------------------------------------------------------------------------------------------ loop
    def loop(self, *, collate_fn, num_workers: int, callbacks: tuple, resume: bool) -> Path:
        """Steps from the start (or resumed) step to ``train.steps`` through :func:`domainfm.train.loop.fit`,
        with :meth:`_after_step` (learning check, EMA, callbacks, log, checkpoint, stop) after each."""
        tcfg, ctx = self.tcfg, self.ctx
        self.learning = LearningCheck(tcfg.steps, tcfg.warmup_steps, tcfg.flat_tolerance, start=self.start_step)
        self.card["learning"] = self.learning.record
        self.logger = MetricsLogger(self.run_dir, tcfg.tensorboard, ctx.is_main, self.start_step)
        self.progress = None
        if tcfg.progress and ctx.is_main:
            self.progress = progress_bar(
                total=tcfg.steps, initial=self.start_step, desc="train", dynamic_ncols=True, leave=True
            )
        self.clock = (time.perf_counter(), time.process_time(), self.start_step)
        self.last_ckpt = self.last if (resume and ctx.is_main) else None
        self.batches = RunBatches(self.dataset, tcfg, ctx, self.device, collate_fn, num_workers, self.per_epoch)
        self.micro = self.start_step * tcfg.accum_steps
        self.t_last, self.seen = time.perf_counter(), 0
        self.callbacks = callbacks
        self.stop = _StopRequest()
        try:
            self.stop.__enter__()
            fit(self._stepper(), self._batch, start=self.start_step, after_step=self._after_step)
            if self.use_fsdp:
                fsdp.copy_back(self.module, self.user_module, self.device)
        finally:
            self.stop.__exit__()
            if self.progress is not None:
                finish_progress(self.progress)  # a notebook keeps the bar's final state as text
            self.logger.close()
            ctx.close()
        return self.last_ckpt if self.last_ckpt is not None else list_checkpoints(self.run_dir)[-1]

    def _stepper(self) -> Stepper:
        """The optimiser step: warmup + cosine rate, micro-batches under bf16 autocast when on, DDP's
        ``no_sync`` before the last micro-batch, clipping, update, the module's ``on_step_end``."""
        tcfg = self.tcfg
        return Stepper(
            self.module,
            self.model_for_step,
            self.optimizer,
            lambda step: lr_at(step, tcfg.lr, tcfg.steps, tcfg.warmup_steps, tcfg.min_lr),
            tcfg.steps,
            params=self.trainable,
            clip_grad=tcfg.clip_grad,
            accum_steps=tcfg.accum_steps,
            bf16=self.use_bf16,
            device_type=self.device.type,
            check_loss=self._check_loss,
            skip_sync=self.ctx.enabled and not self.use_fsdp,  # FSDP2's no_sync is fsdp.set_grad_sync
        )

    def _batch(self, step: int, k: int) -> dict:
        """Micro-batch ``k`` of ``step``, checked and on the device, with the step's random seed set."""
        tcfg, ctx, accum = self.tcfg, self.ctx, self.tcfg.accum_steps
        batch = self.batches.next(self.micro)
        self.micro += 1
        check_finite(batch)
        batch = to_device(batch, self.device)
        # randomness inside the step (masking, dropout) is a function of the step alone: exact resume
        torch.manual_seed(tcfg.seed * 1_000_003 + (step * accum + k) * 7919 + ctx.rank)
        fsdp.set_grad_sync(self.module, k == accum - 1)  # FSDP2's no_sync (DDP's is the stepper's)
        self.seen += batch_size(batch) * ctx.world_size
        return batch

    def _check_loss(self, step: int, value: float) -> None:
        """A non-finite loss (on any rank) stops the run, naming the last good checkpoint."""
        if self.ctx.any_true(not math.isfinite(value), self.device):
            where = (
                f"; the last good checkpoint is {self.last_ckpt}"
                if self.last_ckpt
                else "; no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"loss became {value} at step {step + 1}{where} "
                f"(try a lower train.lr, train.clip_grad, or check the data for NaNs)"
            )

    def _after_step(self, result: StepResult) -> None:
        """What follows an optimiser step: learning check, EMA, callbacks, log, progress, then a checkpoint
        when due or when a stop was asked for (which then ends the run)."""
        tcfg, step, outputs = self.tcfg, result.step, result.outputs
        if self.learning.update(step, result.loss) is not None:
            _after_learning_check(self.learning, self.user_module, outputs, tcfg, self.card, self.ctx, self.device)
        self._update_ema()
        extra = self._callbacks(step, self.callbacks)
        if self.ctx.is_main and (step % tcfg.log_every == 0 or step == tcfg.steps or extra):
            self._log(step, {"loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm}, outputs, extra)
        if self.progress is not None:
            self.progress.update(1)
        stopping = self.ctx.any_true(self.stop.signal is not None, self.device)
        self._maybe_save(step, stopping)
        if stopping:
            self._interrupted(step)

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        with torch.no_grad():
            named = dict(self.module.named_parameters())
            for n, t in self.ema.items():
                t.mul_(self.tcfg.ema).add_(named[n].detach(), alpha=1 - self.tcfg.ema)

    def _callbacks(self, step: int, callbacks: tuple) -> dict[str, float]:
        extra: dict[str, float] = {}
        encoder = getattr(self.module, self.encoder_attr, self.module)
        with fsdp.gathered(self.module, bool(callbacks)):  # FSDP: whole weights for the encoder calls of a probe
            for cb in callbacks:
                extra.update(cb(step, encoder) or {})
        return extra

    def _log(self, step: int, metrics: dict, outputs: dict, extra: dict) -> None:
        """The step's metrics (loss, lr, gradient norm, throughput, the objective's scalars, collapse
        statistics of its embeddings, callbacks) to CSV/TensorBoard and the progress bar."""
        now = time.perf_counter()
        metrics["samples_per_s"] = self.seen / max(now - self.t_last, 1e-9)
        for key, val in outputs.items():
            if key != "loss" and isinstance(val, torch.Tensor) and val.ndim == 0:
                metrics[key] = float(val)
        if isinstance(outputs.get("embeddings"), torch.Tensor) and outputs["embeddings"].shape[0] > 1:
            metrics.update(collapse_metrics(outputs["embeddings"]))
        metrics.update(extra)
        self.logger.log(step, metrics)
        self.t_last, self.seen = now, 0
        if self.progress is not None:
            self.progress.set_postfix({k: f"{metrics[k]:.4g}" for k in ("loss", "embed_std") if k in metrics})

    def _maybe_save(self, step: int, stopping: bool) -> None:
        if step % self.tcfg.ckpt_every == 0 or step == self.tcfg.steps or stopping:
            if self.ctx.is_main or self.use_fsdp:
                saved = self._save(step)
                self.last_ckpt = saved if self.ctx.is_main else self.last_ckpt
            self.ctx.barrier()

    def _save(self, step: int) -> Path | None:
        """Write a checkpoint from rank 0; under FSDP every rank calls it (the full tensors are gathered)."""
        module, ctx = self.module, self.ctx
        self.card["compute"] = _compute_record(self.clock, step, self.device, ctx.world_size)
        tensors = fsdp.full_state(module) if self.use_fsdp else dict(module.state_dict())
        if self.ema is not None:
            tensors.update({f"ema.{n}": fsdp.full_tensor(t) for n, t in self.ema.items()})
        osd = fsdp.full_optimizer_state(module, self.optimizer) if self.use_fsdp else self.optimizer.state_dict()
        if not ctx.is_main:
            return None
        otensors, ometa = optimizer_state(osd)
        rtensors, rmeta = rng_state()
        return save_checkpoint(
            self.run_dir,
            step,
            tensors,
            {**self.card, "ema": self.ema is not None},
            {**otensors, **rtensors},
            {"step": step, "optimizer": ometa, "rng": rmeta},
            keep_last=self.tcfg.keep_last,
        )

    def _interrupted(self, step: int) -> None:
        if self.ctx.is_main:
            print(
                f"interrupted at step {step} of {self.tcfg.steps}: checkpoint saved to {self.last_ckpt}\n"
                f"resume with: {resume_command(self.card, self.run_dir)}",
                file=sys.stderr,
                flush=True,
            )
        raise KeyboardInterrupt
