"""Training metrics as ``step,metric,value`` rows in ``metrics.csv``, mirrored to TensorBoard when installed.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     logger = MetricsLogger(Path(d), tensorboard=False, enabled=True)
    ...     logger.log(1, {"loss": 0.5}); logger.close()
    ...     (Path(d) / "metrics.csv").read_text().splitlines()
    ['step,metric,value', '1,loss,0.5']
"""

from __future__ import annotations

import csv
import os
from pathlib import Path


class MetricsLogger:
    """Appends ``step,metric,value`` rows to ``metrics.csv`` and mirrors them to TensorBoard.

    A resumed run (``start_step`` > 0) first drops the rows logged after its checkpoint: they are logged
    again. ``enabled=False`` (ranks other than 0) writes nothing.
    """

    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool, start_step: int = 0):
        self.enabled = enabled
        self.path = run_dir / "metrics.csv"
        self.writer = None
        if not enabled:
            return
        if self.path.exists():  # a resumed run: rows logged after its checkpoint will be logged again
            self._keep_rows_up_to(start_step)
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

    def _keep_rows_up_to(self, start_step: int) -> None:
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= start_step]
        tmp = self.path.with_name(".metrics.csv.tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([["step", "metric", "value"], *kept])
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Write one row per metric of ``step`` (and flush, so a crash loses nothing logged)."""
        if not self.enabled:
            return
        for k, v in metrics.items():
            self._csv.writerow([step, k, f"{v:.6g}"])
            if self.writer is not None:
                self.writer.add_scalar(k, v, step)
        self._file.flush()

    def close(self) -> None:
        """Close the CSV file and the TensorBoard writer."""
        if self.enabled:
            self._file.close()
            if self.writer is not None:
                self.writer.close()
