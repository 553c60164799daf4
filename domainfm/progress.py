"""Progress of long inference on stderr: items done / total, rate and ETA, at most every few seconds.

Short runs stay silent (nothing is printed before ``interval`` seconds have passed); a run that
takes minutes says where it is, so a big scene or slide never looks like a hang.

Example:
    >>> import io
    >>> buf = io.StringIO()
    >>> p = Progress(4, "predict", enabled=True, interval=0.0, stream=buf)
    >>> for i in range(1, 5):
    ...     p.update(i)
    >>> p.close()
    >>> buf.getvalue().splitlines()[-1].startswith("predict: 4/4 tiles (100%)")
    True
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Prints ``desc: done/total unit (pct), rate, ETA`` to ``stream`` every ``interval`` seconds.

    ``enabled=None`` prints only once a run has lasted ``interval`` seconds (the default, 5 s).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "tiles",
        enabled: bool | None = None,
        interval: float = 5.0,
        stream: TextIO | None = None,
    ):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.enabled = enabled is not False
        self.interval = interval
        self.stream = stream or sys.stderr
        self.t0 = self.last = time.perf_counter()
        self.done = 0
        self.printed = False

    def update(self, done: int) -> None:
        self.done = int(done)
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = max(now - self.t0, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / max(1, self.total)
        eta_s = _fmt_seconds(eta) if eta != float("inf") else "?"
        print(
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.1f}/s, ETA {eta_s}",
            file=self.stream,
            flush=True,
        )
        self.printed = True

    def close(self) -> None:
        """A final line when progress was shown (so the last figure is the end)."""
        if self.enabled and self.printed and self.done:
            self._print(time.perf_counter())
