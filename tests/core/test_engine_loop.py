"""The one optimiser step and loop (domainfm.train.loop) the engine and evaluation's fine-tuning share."""

import math

import pytest
import torch
from torch import nn

from domainfm.errors import DomainFMError, NonFiniteLossError
from domainfm.eval.finetune import finetune_classifier
from domainfm.models import build_encoder
from domainfm.train.loop import Stepper, fit


class _Counting(nn.Linear):
    def __init__(self):
        super().__init__(2, 1)
        self.ends = []

    def on_step_end(self, step, total_steps):
        self.ends.append((step, total_steps))


def _stepper(model, x, y, **kw):
    opt = torch.optim.SGD([{"params": model.parameters(), "lr_scale": 0.5}], lr=1.0)
    return Stepper(
        model, lambda idx: {"loss": ((model(x[idx]) - y[idx]) ** 2).mean()}, opt, lambda s: 0.1 * (s + 1), 3, **kw
    )


def test_a_step_sets_the_scheduled_rate_accumulates_clips_and_calls_on_step_end():
    torch.manual_seed(0)
    model, x, y = _Counting(), torch.randn(8, 2), torch.randn(8, 1)
    seen = []

    def batch_of(step, k):
        seen.append((step, k))
        return torch.arange(4 * k, 4 * k + 4)

    stepper = _stepper(model, x, y, accum_steps=2, clip_grad=1e-3)
    with torch.no_grad():
        losses = [float(((model(x[i]) - y[i]) ** 2).mean()) for i in (torch.arange(4), torch.arange(4, 8))]
    result = stepper.step(0, batch_of)
    assert seen == [(0, 0), (0, 1)] and result.step == 1 and result.lr == 0.1
    assert stepper.optimizer.param_groups[0]["lr"] == 0.1 * 0.5
    assert result.loss == pytest.approx(sum(losses) / 2) and result.grad_norm > 1e-3
    assert model.ends == [(1, 3)] and all(p.grad is None for p in model.parameters())


def test_fit_runs_the_remaining_steps_and_a_refused_loss_stops_before_the_update():
    torch.manual_seed(0)
    model, x, y = _Counting(), torch.randn(8, 2), torch.randn(8, 1)
    done = []
    last = fit(_stepper(model, x, y), lambda s, k: torch.arange(8), start=1, after_step=lambda r: done.append(r.step))
    assert done == [2, 3] and last.step == 3 and math.isnan(last.grad_norm)
    assert fit(_stepper(model, x, y), lambda s, k: torch.arange(8), start=3) is None
    before = model.weight.detach().clone()
    y_bad = torch.full_like(y, float("nan"))
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        fit(_stepper(model, x, y_bad), lambda s, k: torch.arange(8))
    assert torch.equal(model.weight, before) and model.weight.grad is None

    def refuse(step, value):
        raise DomainFMError(f"stop at {step}")

    with pytest.raises(DomainFMError, match="stop at 0"):
        fit(_stepper(model, x, y, check_loss=refuse), lambda s, k: torch.arange(8))


def _hand_written_finetune(encoder, x, y, steps, lr=1e-3, seed=0, bs=8, warmup_frac=0.1):
    """eval.finetune's loop as it was written before it went through domainfm.train.loop."""
    from domainfm.eval.finetune import PooledClassifier, _prepare
    from domainfm.train.layer_decay import param_groups_layer_decay

    torch.manual_seed(seed)
    model = PooledClassifier(_prepare(encoder, "full", 4, 8.0), 2)
    gen = torch.Generator().manual_seed(seed)
    groups = param_groups_layer_decay(model, lr, 0.05, 0.75)
    for g in groups:
        g.pop("names", None)
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    warmup, order, pos, n = max(1, int(warmup_frac * steps)), torch.randperm(len(x), generator=gen), 0, len(x)
    params = [p for g in groups for p in g["params"]]
    model.train()
    for step in range(steps):
        scale = (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        )
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"] * scale
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + bs]
        pos += bs
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return float(loss.detach())


def test_evaluation_fine_tuning_through_the_shared_loop_gives_the_hand_written_loops_loss():
    torch.manual_seed(0)
    enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2)
    x, y = torch.randn(20, 1, 16, 16), torch.arange(20) % 2
    x[y == 1] += 0.5
    _, info = finetune_classifier(enc, x, y, x[:2], num_classes=2, steps=25, batch_size=8, seed=0)
    assert info["final_loss"] == _hand_written_finetune(enc, x, y, steps=25)
