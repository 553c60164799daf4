"""The optimiser step every training in the kit takes, and the plain loop around it.

One step: set each parameter group's learning rate from the schedule (``value * group["lr_scale"]``),
forward and backward over ``accum_steps`` micro-batches (bf16 autocast when asked, DDP's ``no_sync`` on
all but the last), check each loss, clip the gradient norm, update, clear the gradients, then the
module's ``on_step_end(step, total_steps)`` (e.g. a teacher's momentum update). The pretraining engine
(:mod:`domainfm.train.engine`) runs it with checkpoints, resume, logging and learning checks around
each step; evaluation's fine-tuning (:mod:`domainfm.eval.finetune`) runs it as it is.

Example:
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> x, y = torch.randn(8, 2), torch.randn(8, 1)
    >>> stepper = Stepper(model, lambda b: {"loss": ((model(x) - y) ** 2).mean()}, opt, lambda s: 0.1, 5)
    >>> first = stepper.step(0, lambda step, k: None)
    >>> last = fit(stepper, lambda step, k: None, start=1)
    >>> last.step, last.loss < first.loss
    (5, True)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from domainfm.errors import NonFiniteLossError
from domainfm.train.fsdp import full_tensor


@dataclass
class StepResult:
    """What one optimiser step did: ``step`` (steps done, counting this one), the schedule's value ``lr``, the
    mean ``loss`` of its micro-batches, the gradient norm before clipping (NaN without clipping) and the
    last micro-batch's ``outputs``."""

    step: int
    lr: float
    loss: float
    grad_norm: float
    outputs: dict


def _refuse_non_finite(step: int, value: float) -> None:
    if not math.isfinite(value):
        raise NonFiniteLossError(f"loss became {value} at step {step + 1} (try a lower learning rate)")


def refuse_divergence(what: str, optimizer: torch.optim.Optimizer) -> Callable[[int, float], None]:
    """A ``check_loss`` for :class:`Stepper`: a non-finite loss is one line naming ``what``, the step and the
    learning rate to lower.

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.5)
        >>> refuse_divergence("fine-tuning", opt)(3, float("nan"))
        Traceback (most recent call last):
        ...
        domainfm.errors.NonFiniteLossError: fine-tuning diverged (loss nan) at step 3; lower the lr (now 0.5)
    """

    def check(step: int, value: float) -> None:
        if not math.isfinite(value):
            lr = optimizer.param_groups[0]["lr"]
            raise NonFiniteLossError(f"{what} diverged (loss {value}) at step {step}; lower the lr (now {lr:g})")

    return check


@dataclass
class Stepper:
    """The optimiser step (see the module text) for ``module`` trained through ``forward``.

    ``forward(batch)`` returns a dict with ``loss`` (the module itself, its DDP wrapper, or a closure
    computing a loss); ``schedule(step)`` the learning-rate value of 0-based ``step``; ``check_loss(step,
    value)`` is called with every micro-batch's loss before its backward and raises to stop (default: a
    :class:`NonFiniteLossError` on NaN/inf). ``params`` are the parameters clipped (default: the
    optimiser's). ``skip_sync``: ``forward`` is DDP, whose gradient all-reduce waits for the last
    micro-batch.
    """

    module: nn.Module
    forward: Callable[[Any], dict]
    optimizer: torch.optim.Optimizer
    schedule: Callable[[int], float]
    total_steps: int
    params: list = field(default_factory=list)
    clip_grad: float = 0.0
    accum_steps: int = 1
    bf16: bool = False
    device_type: str = "cpu"
    check_loss: Callable[[int, float], None] = _refuse_non_finite
    skip_sync: bool = False

    def __post_init__(self) -> None:
        if not self.params:
            self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

    def step(self, step: int, batch_of: Callable[[int, int], Any]) -> StepResult:
        """Optimiser step ``step`` (0-based) on the micro-batches ``batch_of(step, k)``, ``k < accum_steps``."""
        lr = self.schedule(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        outputs: dict = {}
        loss_sum = 0.0
        for k in range(self.accum_steps):
            outputs, value = self._micro_step(step, k, batch_of(step, k))
            loss_sum += value / self.accum_steps
        grad_norm = float("nan")
        if self.clip_grad:
            grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        step += 1
        if hasattr(self.module, "on_step_end"):
            self.module.on_step_end(step, self.total_steps)
        return StepResult(step, lr, loss_sum, grad_norm, outputs)

    def _micro_step(self, step: int, k: int, batch: Any) -> tuple[dict, float]:
        """Forward and backward of micro-batch ``k``; its loss is checked before the backward."""
        accum = self.accum_steps
        no_sync = self.skip_sync and k < accum - 1
        sync = self.forward.no_sync() if no_sync else contextlib.nullcontext()
        amp = torch.autocast(self.device_type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with sync, amp:
            outputs = self.forward(batch)
            loss = outputs["loss"] / accum
        value = float(loss.detach()) * accum
        self.check_loss(step, value)
        loss.backward()
        return outputs, value


def fit(
    stepper: Stepper,
    batch_of: Callable[[int, int], Any],
    *,
    start: int = 0,
    after_step: Callable[[StepResult], None] | None = None,
) -> StepResult | None:
    """Train ``stepper.module`` from step ``start`` to ``stepper.total_steps``; ``after_step(result)`` runs
    after each step (logging, checkpoints, stopping by raising). Returns the last step's result (``None``
    when there was no step to take)."""
    stepper.module.train()
    stepper.optimizer.zero_grad(set_to_none=True)
    result = None
    for step in range(start, stepper.total_steps):
        result = stepper.step(step, batch_of)
        if after_step is not None:
            after_step(result)
    return result
