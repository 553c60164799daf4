"""Evaluation results as records, and their report: ``report.json``, ``report.md`` and PNG plots.

A record is one row: an encoder (``pretrained``, ``random``, or a checkpoint name), a protocol, a
label fraction (or a number of shots), a metric, its mean over seeds, the bootstrap 95% interval,
the per-seed values and the gain over the baseline with its own (paired) interval.

Example:
    >>> rec = {"encoder": "pretrained", "protocol": "knn", "fraction": 0.1, "shots": None, "n_train": 10,
    ...        "metric": "accuracy", "mean": 0.9, "ci_low": 0.85, "ci_high": 0.95, "gain": 0.2,
    ...        "gain_low": 0.1, "gain_high": 0.3, "per_seed": [0.9]}
    >>> res = EvalResult([rec])
    >>> res.summary("knn", "accuracy")[("pretrained", 0.1)]
    0.9
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from domainfm.io_safety import atomic_output
from domainfm.viz import new_figure, save_figure

METRIC_NAMES = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced acc.",
    "macro_f1": "Macro-F1",
    "auroc": "AUROC",
    "dice": "Dice",
    "miou": "mIoU",
}


class EvalResult(list):
    """A list of record dicts with helpers: ``to_frame()`` (pandas), ``summary(protocol, metric)``.

    ``meta`` holds the run's settings (checkpoint, data, seeds, cache hits...); ``paths`` the files
    written (``report.json``, ``report.md``, plots) when an output folder was given.
    """

    def __init__(self, records=(), meta: dict | None = None):
        super().__init__(records)
        self.meta = dict(meta or {})
        self.paths: dict[str, Path] = {}

    def to_frame(self):
        """The records as a ``pandas.DataFrame`` (one row per encoder x protocol x fraction x metric)."""
        import pandas as pd  # optional: a DataFrame view when pandas is installed

        return pd.DataFrame(list(self))

    def summary(self, protocol: str, metric: str) -> dict[tuple[str, Any], float]:
        """``{(encoder, fraction or shots): mean}`` for one protocol and metric."""
        return {
            (r["encoder"], r["fraction"] if r.get("shots") is None else r["shots"]): r["mean"]
            for r in self
            if r["protocol"] == protocol and r["metric"] == metric
        }

    def pivot(self) -> list[dict]:
        """One row per (protocol, encoder, labels), one column per metric: ``mean [ci_low, ci_high]``."""
        rows: dict[tuple, dict] = {}
        for r in self:
            key = (r["protocol"], r["encoder"], _x_label(r))
            row = rows.setdefault(key, {"protocol": key[0], "encoder": key[1], "labels": key[2]})
            row[METRIC_NAMES.get(r["metric"], r["metric"])] = _value_cell(r)
        return list(rows.values())

    def __repr__(self) -> str:
        rows = self.pivot()
        if not rows:
            return "EvalResult(no records)"
        cols = list(dict.fromkeys(k for r in rows for k in r))
        width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
        lines = ["  ".join(f"{c:<{width[c]}}" for c in cols)]
        lines += ["  ".join(f"{str(r.get(c, '')):<{width[c]}}" for c in cols) for r in rows]
        where = f" ({self.meta['checkpoint']})" if self.meta.get("checkpoint") else ""
        return f"EvalResult{where}: {len(self)} records\n" + "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = self.pivot()
        cols = list(dict.fromkeys(k for r in rows for k in r))
        head = "".join(f"<th>{c}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{r.get(c, '')}</td>" for c in cols) + "</tr>" for r in rows)
        where = f" of {self.meta['checkpoint']}" if self.meta.get("checkpoint") else ""
        return f"<div><b>EvalResult{where}</b> ({len(self)} records)<table><tr>{head}</tr>{body}</table></div>"

    def plot(self, protocol: str | None = None, path: str | Path | None = None):
        """A matplotlib Figure of one protocol (default the first): metric vs labelled fraction or shots,
        one line per encoder, 95% intervals; it shows itself in a notebook (see :func:`domainfm.viz.new_figure`)
        and is written to ``path`` only when given.

        Example:
            >>> rec = {"encoder": "pretrained", "protocol": "knn", "fraction": 0.1, "shots": None, "n_train": 10,
            ...        "metric": "accuracy", "mean": 0.9, "ci_low": 0.85, "ci_high": 0.95, "per_seed": [0.9]}
            >>> fig = EvalResult([rec]).plot()
            >>> type(fig).__name__, fig._repr_png_()[:4]
            ('Figure', b'\\x89PNG')
        """
        protocols = list(dict.fromkeys(r["protocol"] for r in self))
        if not protocols:
            raise KeyError("no records to plot")
        protocol = protocol or protocols[0]
        if protocol not in protocols:
            raise KeyError(f"no protocol {protocol!r} in this result (it has: {', '.join(protocols)})")
        return save_figure(protocol_figure([r for r in self if r["protocol"] == protocol], protocol), path)

    def get(self, encoder: str, protocol: str, metric: str, fraction=None, shots=None) -> dict:
        """The one record matching the arguments (``KeyError`` if none)."""
        for r in self:
            if (
                (r["encoder"], r["protocol"], r["metric"]) == (encoder, protocol, metric)
                and (fraction is None or _close(r["fraction"], fraction))
                and (shots is None or r.get("shots") == shots)
            ):
                return r
        raise KeyError((encoder, protocol, metric, fraction, shots))


def _close(a, b) -> bool:
    return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9)


def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _x_label(r) -> str:
    if r.get("shots") is not None:
        return f"{r['shots']}-shot"
    return f"{100 * r['fraction']:g}%"


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return _json_safe(obj.item())
    return obj


def _value_cell(r: dict) -> str:
    return f"{_fmt(r['mean'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"


def _gain_cell(r: dict) -> str:
    """``+gain [low, high]``, bold when the interval is above 0."""
    if r["gain"] is None or not math.isfinite(r["gain"]):
        return "n/a"
    txt = f"{r['gain']:+.3f} [{_fmt(r['gain_low'])}, {_fmt(r['gain_high'])}]"
    if r.get("gain_low") is not None and math.isfinite(r["gain_low"]) and r["gain_low"] > 0:
        txt = f"**{txt}**"
    return txt


def _table(rows: list[dict], metrics: list[str], cell, with_n_train: bool) -> list[str]:
    """Markdown rows: one line per (encoder, labels), one column per metric, cells from ``cell(record)``."""
    head = "| encoder | labels | " + ("n train | " if with_n_train else "")
    out = [
        head + " | ".join(METRIC_NAMES.get(m, m) for m in metrics) + " |",
        "|---|---|" + ("---|" if with_n_train else "") + "---|" * len(metrics),
    ]
    keys = list(dict.fromkeys((r["encoder"], r["fraction"], r.get("shots")) for r in rows))
    keys.sort(key=lambda k: (k[1] if k[1] is not None else 0, k[2] or 0))
    for key in keys:
        by_metric = {r["metric"]: r for r in rows if (r["encoder"], r["fraction"], r.get("shots")) == key}
        first = next(by_metric[m] for m in metrics if m in by_metric)
        cells = [cell(by_metric[m]) if m in by_metric else "" for m in metrics]
        n = f"{first['n_train']} | " if with_n_train else ""
        out.append(f"| {key[0]} | {_x_label(first)} | {n}" + " | ".join(cells) + " |")
    return out


def render_markdown(result: EvalResult) -> str:
    """A readable report: settings, one table per protocol (mean [95% CI]) and the gains over the baseline."""
    meta = result.meta
    lines = ["# domainfm evaluation", ""]
    for key in (
        "checkpoint",
        "data",
        "domain",
        "baseline",
        "seeds",
        "n_train_pool",
        "n_test",
        "test_split",
        "n_boot",
        "pool",
        "mean_over",
    ):
        if key in meta:
            lines.append(f"- **{key}**: {meta[key]}")
    lines.append("")
    lines.append(
        "Values are means over seeds; brackets give the bootstrap 95% interval over test-set "
        "resamples and seeds. Gain = encoder minus baseline, paired on the same resamples; "
        "**bold** gains have an interval above 0. The random baseline is the same architecture "
        "with seed-0 initial weights (the very weights pretraining started from when its "
        "train.seed is 0), so the gain isolates what pretraining learned."
    )
    baseline = meta.get("gain_vs")
    for protocol in dict.fromkeys(r["protocol"] for r in result):
        rows = [r for r in result if r["protocol"] == protocol]
        metrics = list(dict.fromkeys(r["metric"] for r in rows))
        lines += ["", f"## {protocol}", ""]
        lines += _table(rows, metrics, _value_cell, with_n_train=True)
        gains = [r for r in rows if r.get("gain") is not None]
        if gains and baseline:
            lines += ["", f"Gain over **{baseline}**:", ""]
            lines += _table(gains, metrics, _gain_cell, with_n_train=False)
    verdicts = worth_it(result)
    if verdicts:
        lines += ["", "## Was pretraining worth it?", ""] + [f"- {v}" for v in verdicts]
    lines.append("")
    return "\n".join(lines)


def _headline(records: list[dict]) -> str | None:
    names = {r["metric"] for r in records}
    return next((m for m in ("auroc", "dice", "miou", "accuracy") if m in names), None)


def _verdict(gain: dict) -> str:
    if not _finite(gain.get("low"), gain.get("high")):
        return "no interval"
    if gain["low"] > 0:
        return "pretraining paid off"
    return "pretraining did worse" if gain["high"] < 0 else "no clear difference"


def _cost_text(meta: dict, protocol: str) -> str:
    compute = meta.get("compute") or {}
    pre = compute.get("pretraining") or {}
    parts = []
    if pre:
        parts.append(
            f"pretraining {pre.get('wall_seconds')} s wall / {pre.get('cpu_seconds')} CPU s on {pre.get('device')}"
        )
    seconds = (compute.get("adaptation_seconds") or {}).get("frozen" if protocol in ("linear", "knn") else protocol)
    if seconds is not None:
        parts.append(f"{protocol} evaluation of all encoders {seconds} s")
    sup = compute.get("supervised") or {}
    if sup:
        parts.append(f"supervised baseline {sup.get('seconds')} s for {sup.get('runs')} runs ({sup.get('arch')})")
    return f" Compute: {'; '.join(parts)}." if parts else ""


def worth_it(result: EvalResult) -> list[str]:
    """One sentence per protocol and label fraction: does the pretrained encoder beat each baseline, by how
    much, with its paired interval, and at what compute.

    Example:
        >>> rec = {"encoder": "pretrained", "protocol": "linear", "fraction": 0.1, "shots": None, "n_train": 24,
        ...        "metric": "auroc", "mean": 0.9, "ci_low": 0.85, "ci_high": 0.95, "per_seed": [0.9],
        ...        "vs": {"supervised": {"gain": 0.05, "low": 0.01, "high": 0.09}}}
        >>> worth_it(EvalResult([rec]))[0]
        'linear, 10% labels (24 items): AUROC 0.900; vs supervised +0.050 [0.010, 0.090]: pretraining paid off.'
    """
    records = [r for r in result if r["encoder"] == "pretrained" and r.get("vs")]
    metric = _headline(records)
    out = []
    for r in (r for r in records if r["metric"] == metric):
        parts = [
            f"vs {name} {g['gain']:+.3f} [{_fmt(g['low'])}, {_fmt(g['high'])}]: {_verdict(g)}"
            for name, g in r["vs"].items()
            if g.get("gain") is not None
        ]
        label = f"{_x_label(r)} labels ({r['n_train']} items)"
        text = f"{r['protocol']}, {label}: {METRIC_NAMES.get(metric, metric)} {_fmt(r['mean'])}; " + "; ".join(parts)
        out.append(text + "." + _cost_text(result.meta, r["protocol"]))
    return out


def _interval_bars(pts: list[dict]) -> list[list[float]]:
    """Lower and upper error-bar lengths of the 95% intervals (0 where an end is not finite)."""
    lo = [max(0.0, r["mean"] - r["ci_low"]) if _finite(r["ci_low"], r["mean"]) else 0.0 for r in pts]
    hi = [max(0.0, r["ci_high"] - r["mean"]) if _finite(r["ci_high"], r["mean"]) else 0.0 for r in pts]
    return [lo, hi]


def _metric_panel(ax, rows: list[dict], metric: str, encoders: list[str], fewshot: bool) -> None:
    """One metric vs label fraction (log x) or shots, one line per encoder, side by side."""
    ticks = set()
    for e, enc in enumerate(encoders):
        pts = sorted((r for r in rows if r["encoder"] == enc), key=lambda r: r["shots"] if fewshot else r["fraction"])
        xs = [r["shots"] if fewshot else 100 * r["fraction"] for r in pts]
        ticks.update(xs)
        shift = 1.0 + 0.04 * (e - (len(encoders) - 1) / 2)  # side by side, intervals readable
        ys = [r["mean"] for r in pts]
        ax.errorbar([x * shift for x in xs], ys, yerr=_interval_bars(pts), marker="o", capsize=3, label=enc)
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks))
    ax.set_xticklabels([f"{t:g}" if fewshot else f"{t:g}%" for t in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("shots per class" if fewshot else "labelled fraction")
    ax.set_ylabel(METRIC_NAMES.get(metric, metric))
    ax.grid(alpha=0.3)


def protocol_figure(rows: list[dict], protocol: str):
    """A matplotlib Figure for one protocol's records: one panel per metric, metric vs label fraction
    (log x) or shots, 95% interval bars, one line per encoder (no pyplot state, no window)."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    ncol = min(2, len(metrics))
    nrow = (len(metrics) + ncol - 1) // ncol
    fig = new_figure(figsize=(4.6 * ncol, 3.4 * nrow), dpi=100)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    fewshot = rows[0].get("shots") is not None
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    for ax, metric in zip(axes.ravel(), metrics):
        _metric_panel(ax, [r for r in rows if r["metric"] == metric], metric, encoders, fewshot)
    for ax in axes.ravel()[len(metrics) :]:
        ax.axis("off")
    axes.ravel()[0].legend()
    fig.suptitle(f"{protocol}: mean over seeds, 95% bootstrap interval")
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.2 / nrow, top=1 - 0.12 / nrow, wspace=0.3, hspace=0.5)
    return fig


def plot_result(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """One PNG per protocol (``<protocol>.png``) from :func:`protocol_figure`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for protocol in dict.fromkeys(r["protocol"] for r in result):
        path = out_dir / f"{protocol}.png"
        with atomic_output(path) as tmp:
            protocol_figure([r for r in result if r["protocol"] == protocol], protocol).savefig(tmp)
        paths.append(path)
    return paths


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def write_report(result: EvalResult, out: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write ``report.json`` (meta + records), ``report.md`` and the plots under ``out``, each atomically
    (an earlier report is replaced file by file, never left half-written).

    Example:
        >>> import tempfile
        >>> res = EvalResult([{"encoder": "random", "protocol": "knn", "fraction": 1.0, "shots": None,
        ...     "n_train": 4, "metric": "accuracy", "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6,
        ...     "per_seed": [0.5], "gain": None}])
        >>> sorted(write_report(res, tempfile.mkdtemp()))
        ['json', 'markdown', 'plot:knn']
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["json"] = out / "report.json"
    with atomic_output(paths["json"]) as tmp:
        tmp.write_text(json.dumps(_json_safe({"meta": result.meta, "records": list(result)}), indent=2))
    paths["markdown"] = out / "report.md"
    with atomic_output(paths["markdown"]) as tmp:
        tmp.write_text(render_markdown(result))
    if plots:
        for p in plot_result(result, out):
            paths[f"plot:{p.stem}"] = p
    result.paths = paths
    return paths
