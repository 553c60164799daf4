"""Is the run learning? A loss that stays flat from the start past warmup stops the run with its cause.

Collapse detection (:mod:`domainfm.ssl.dino`) catches a self-distillation run that learned and then
lost the input; this catches the run that never started: a DINO head whose teacher stays uniform
(loss at log K from the first step), a learning rate too low to move anything, an MAE on noise.
The check compares the mean loss of the first steps (before the learning rate has risen) with the
mean of the latest steps once warmup is over. A relative change below ``train.flat_tolerance`` means
the run is not learning: it stops with one line naming the cause and the settings to change
(``train.stop_if_not_learning=false`` keeps going with a warning). The outcome is recorded in the
checkpoint card under ``learning``.

Example:
    >>> check = LearningCheck(total=100, warmup=10, tolerance=0.01)
    >>> for step in range(1, 101):
    ...     verdict = check.update(step, 8.3)
    >>> check.record["flat"], check.record["checked_at"]
    (True, 25)
"""

from __future__ import annotations

import math

from domainfm.errors import NotLearningError

__all__ = ["GENERIC_HINT", "LearningCheck", "NotLearningError"]

#: runs shorter than this are not checked (too few steps to tell a trend from noise)
MIN_STEPS = 30


class LearningCheck:
    """Tracks the loss of a run and decides once, after warmup, whether it moved.

    Args:
        total: steps of the run. warmup: learning-rate warmup steps.
        tolerance: relative change of the mean loss below which the run is flat.
        start: first step of this process (resumed runs are not re-checked).
    """

    def __init__(self, total: int, warmup: int, tolerance: float, start: int = 0):
        self.window = max(5, min(50, total // 10))
        self.check_at = min(total, max(warmup + self.window, total // 4, 2 * self.window))
        self.tolerance = tolerance
        self.enabled = total >= MIN_STEPS and start == 0 and tolerance > 0
        self.first: list[float] = []
        self.recent: list[float] = []
        self.record: dict = {"checked": False, "reason": "" if self.enabled else self._skip_reason(total, start)}

    @staticmethod
    def _skip_reason(total: int, start: int) -> str:
        if start:
            return "resumed run: checked by the first part"
        return f"not checked: runs shorter than {MIN_STEPS} steps" if total < MIN_STEPS else "not checked"

    def update(self, step: int, loss: float) -> bool | None:
        """Feed the loss of ``step``; at the check step return whether the run is flat, else ``None``."""
        if not self.enabled or self.record["checked"] or not math.isfinite(loss):
            return None
        if len(self.first) < self.window:
            self.first.append(loss)
        self.recent = (self.recent + [loss])[-self.window :]
        if step < self.check_at:
            return None
        start, now = sum(self.first) / len(self.first), sum(self.recent) / len(self.recent)
        change = abs(now - start) / max(abs(start), 1e-8)
        flat = change < self.tolerance
        self.record = {
            "checked": True,
            "checked_at": step,
            "start_loss": round(start, 6),
            "recent_loss": round(now, 6),
            "relative_change": round(change, 6),
            "tolerance": self.tolerance,
            "flat": flat,
            "signal": "loss",
        }
        return flat

    def message(self, hint: str) -> str:
        """The one line a flat run ends with: what was seen, the likely cause, what to change."""
        r = self.record
        if r.get("signal") == "objective":
            keep = "train.stop_if_not_learning=false keeps going"
            return f"the run is not learning at step {r['checked_at']}: {hint} ({keep})"
        return (
            f"the run is not learning: the loss went from {r['start_loss']:.4g} (first {self.window} steps) to "
            f"{r['recent_loss']:.4g} at step {r['checked_at']} ({100 * r['relative_change']:.2f}% change, under "
            f"train.flat_tolerance {self.tolerance:g}). {hint} (train.stop_if_not_learning=false keeps going)"
        )


GENERIC_HINT = "Try a higher train.lr, fewer train.warmup_steps, or check that the images are not constant or noise."
