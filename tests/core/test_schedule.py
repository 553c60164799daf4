"""One schedule helper: the learning rate, the teachers' momentum and DINO's teacher temperature are the
ramps of domainfm.ramps, with the values the formulas written out by hand gave before."""

import math

import pytest

from domainfm.ramps import cosine_ramp, linear_ramp
from domainfm.train.schedule import lr_at


def _old_lr_at(step, base_lr, total_steps, warmup_steps=0, min_lr=0.0):
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _old_momentum(base, step, total_steps):  # DINO's teacher and MoCo's momentum encoder
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / max(1, total_steps)) + 1) / 2


def _old_teacher_temp(step, warmup_steps, warmup_temp, temp):
    if warmup_steps <= 0 or step >= warmup_steps:
        return temp
    return warmup_temp + (temp - warmup_temp) * step / warmup_steps


def _old_finetune_factor(step, steps, warmup):  # eval.finetune's own copy of warmup + cosine
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@pytest.mark.parametrize("base,min_lr", [(1.5e-4, 0.0), (1e-3, 1e-6), (3e-3, 2.5e-4), (1.0, 0.0)])
def test_lr_at_is_bit_identical_to_the_old_formula(base, min_lr):
    for total in (1, 7, 100, 1001):
        for warmup in (0, 1, 10):
            for step in range(total + 3):
                assert lr_at(step, base, total, warmup, min_lr) == _old_lr_at(step, base, total, warmup, min_lr)


def test_teacher_temperature_warmup_is_bit_identical():
    for w in (0, 1, 3, 30, 997):
        for step in range(w + 5):
            assert linear_ramp(step, w, 0.04, 0.07) == _old_teacher_temp(step, w, 0.04, 0.07)


def test_momentum_and_finetune_factor_agree_to_the_last_bits():
    """The cosine's argument was pi * step / total there and is pi * (step / total) now: the same number,
    rounded in another order: they agree to 1e-15 (a fine-tune of fp32 weights gives the same losses)."""
    for base in (0.99, 0.996, 0.9995):
        for total in (1, 5, 100, 1237):
            for step in range(total + 1):
                assert cosine_ramp(step, total, base, 1.0) == pytest.approx(_old_momentum(base, step, total), abs=1e-15)
    assert [cosine_ramp(s, 10, 0.996, 1.0) for s in (0, 10)] == [_old_momentum(0.996, s, 10) for s in (0, 10)]
    for steps in (30, 77, 300):
        warmup = max(1, int(0.1 * steps))
        for step in range(steps):
            new = lr_at(step, 1.0, steps, warmup)
            assert new == pytest.approx(_old_finetune_factor(step, steps, warmup), abs=1e-15)


def test_the_objectives_read_their_schedules_from_the_ramps(monkeypatch):
    from domainfm.models import build_encoder
    from domainfm.ssl import contrastive, dino

    calls = []

    def recorded(ramp):
        def call(*args, **kwargs):
            calls.append((ramp.__name__, args[:2]))
            return ramp(*args, **kwargs)

        return call

    for module in (dino, contrastive):
        monkeypatch.setattr(module, "cosine_ramp", recorded(cosine_ramp))
    monkeypatch.setattr(dino, "linear_ramp", recorded(linear_ramp))
    enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2)
    teacher = dino.DINO(enc)
    teacher.current_teacher_temp()
    teacher.on_step_end(3, 10)
    contrastive.Contrastive(enc).on_step_end(7, 20)
    assert calls == [("linear_ramp", (0, 0)), ("cosine_ramp", (3, 10)), ("cosine_ramp", (7, 20))]
