"""The protocol runs of an evaluation: frozen probes (linear, kNN, few-shot), fine-tuning and segmentation
at each label fraction and seed, summarised with bootstrap intervals and paired gains over each baseline.

Example:
    >>> _grouped({"pretrained": [1], "pretrained#1": [2], "random": [0]})
    {'pretrained': [1, 2], 'random': [0]}
"""

from __future__ import annotations

import numpy as np
import torch

from domainfm.config import Config
from domainfm.eval.against import paired_gains
from domainfm.eval.encoders import encoder_of
from domainfm.eval.finetune import finetune_classifier, finetune_segmenter
from domainfm.eval.metrics import CLASSIFICATION_METRICS, SEGMENTATION_METRICS, bootstrap_ci, segmentation_metrics
from domainfm.eval.protocols import fewshot_probe, knn_probe, linear_probe
from domainfm.eval.splits import check_pair, random_fraction, stratified_fraction
from domainfm.heads import default_head
from domainfm.registry import get_domain


def _grouped(scores: dict[str, list]) -> dict[str, list]:
    """Scores of pretraining seeds (``pretrained#1``...) appended to ``pretrained``: their replicates
    (pretraining seed x probe seed) enter its means and intervals; baselines pair by probe seed."""
    out: dict[str, list] = {}
    for name, values in scores.items():
        out.setdefault(name.split("#")[0], []).extend(values)
    return out


def _vs_fields(vs: dict, gain_vs: str | None) -> dict:
    """A record's ``vs`` (gain over each baseline) and the legacy ``gain*`` fields (over ``gain_vs``)."""
    main = vs.get(gain_vs) if gain_vs else None
    return {
        "gain": main["gain"] if main else None,
        "gain_low": main["low"] if main else None,
        "gain_high": main["high"] if main else None,
        "baseline": gain_vs if main else None,
        "vs": vs or None,
    }


def _baseline_scores(name: str, scores: dict[str, list], sup, frac) -> dict[str, list]:
    """The baselines ``name`` is compared with: random init (unless it is random) and the supervised runs."""
    out = {b: scores[b] for b in ("random",) if b in scores and b != name}
    if sup is not None and frac is not None and sup.probas(frac):
        out["supervised"] = sup.probas(frac)
    return out


def _summarise(protocol, name, frac, shots, n_train, yte, probas, baselines, n_boot, seed_base, gain_vs):
    stats = bootstrap_ci(yte, probas, n_boot=n_boot, seed=seed_base, num_classes=probas[0].shape[1])
    vs = paired_gains(yte, probas, baselines, n_boot, seed=seed_base) if baselines else {}
    out = []
    for metric in CLASSIFICATION_METRICS:
        s = stats[metric]
        out.append(
            {
                "encoder": name,
                "protocol": protocol,
                "fraction": frac,
                "shots": shots,
                "n_train": n_train,
                "n_test": int(yte.size),
                "seeds": len(probas),
                "metric": metric,
                "mean": s["mean"],
                "ci_low": s["ci_low"],
                "ci_high": s["ci_high"],
                "per_seed": s["per_seed"],
                **_vs_fields(vs.get(metric, {}), gain_vs),
            }
        )
    return out


def supervised_records(sup, n_boot, num_classes, task, background) -> list[dict]:
    """One set of records per label fraction for the supervised baseline (protocol ``supervised``)."""
    truth, records = sup.test_targets(), []
    for frac in sup.fractions():
        probas = sup.probas(frac)
        infos = [info for (f, _), (_, info) in sup.runs.items() if f == frac]
        n_train = infos[0].get("n_fit", 0) + infos[0].get("n_val", 0)
        if task == "segmentation":
            recs = _segmentation_records(
                "supervised", "supervised", frac, n_train, truth, probas, {}, n_boot, None, num_classes, background
            )
        else:
            recs = _summarise("supervised", "supervised", frac, None, n_train, truth, probas, {}, n_boot, 1234, None)
        for r in recs:
            r["steps"] = int(np.mean([i.get("steps", 0) for i in infos]))  # this fraction's runs
        records += recs
    return records


def run_frozen(
    protocol, emb, ytr, yte, num_classes, fracs, n_seeds, k, Cs, shots, episodes, n_boot, gain_vs, source, sup=None
):
    for name, ((x_tr, y_tr), (x_te, y_te)) in emb.items():
        check_pair(x_tr, y_tr, f"{source} ({name} train embeddings)")
        check_pair(x_te, y_te, f"{source} ({name} test embeddings)")
    settings = [(None, int(s)) for s in shots] if protocol == "fewshot" else [(f, None) for f in fracs]
    records = []
    for frac, shot in settings:
        probas: dict[str, list] = {name: [] for name in emb}
        n_train = None
        for seed in range(n_seeds):
            if protocol == "fewshot":
                for name, ((x_tr, _), (x_te, _)) in emb.items():
                    probas[name] += fewshot_probe(
                        x_tr, ytr, x_te, shots=shot, episodes=episodes, seed=seed, num_classes=num_classes
                    )
                n_train = int(sum(min(shot, int((ytr == c).sum())) for c in np.unique(ytr)))
                continue
            idx = stratified_fraction(ytr, frac, seed=seed, source=source)
            n_train = int(idx.size)
            for name, ((x_tr, _), (x_te, _)) in emb.items():
                if protocol == "linear":
                    p = linear_probe(x_tr[idx], ytr[idx], x_te, num_classes=num_classes, seed=seed, Cs=Cs)
                else:
                    p = knn_probe(x_tr[idx], ytr[idx], x_te, k=k, num_classes=num_classes)
                probas[name].append(p)
            if sup is not None:
                sup.scores(frac, seed, idx, num_classes)
        probas = _grouped(probas)
        for name in probas:
            base = _baseline_scores(name, probas, sup, frac) if gain_vs else {}
            records += _summarise(
                protocol, name, frac, shot, n_train, yte, probas[name], base, n_boot, seed_base=1234, gain_vs=gain_vs
            )
    return records


def run_finetune(
    protocol, encoders, xtr, ytr, xte, yte, wl, num_classes, fracs, n_seeds, n_boot, gain_vs, source, kwargs, sup=None
):
    mode = "lora" if protocol == "lora" else "full"
    records = []
    for frac in fracs:
        probas: dict[str, list] = {name: [] for name in encoders}
        infos: dict[str, list] = {name: [] for name in encoders}
        n_train = None
        for seed in range(n_seeds):
            idx = stratified_fraction(ytr, frac, seed=seed, source=source)
            n_train = int(idx.size)
            for name, m in encoders.items():
                p, info = finetune_classifier(
                    encoder_of(m), xtr[idx], ytr[idx], xte, num_classes, mode=mode, seed=seed, wavelengths=wl, **kwargs
                )
                probas[name].append(p)
                infos[name].append(info)
            if sup is not None:
                sup.scores(frac, seed, idx, num_classes)
        probas = _grouped(probas)
        for name in probas:
            base = _baseline_scores(name, probas, sup, frac) if gain_vs else {}
            recs = _summarise(protocol, name, frac, None, n_train, yte, probas[name], base, n_boot, 1234, gain_vs)
            for r in recs:
                r["trainable_fraction"] = float(np.mean([i["encoder_trainable_fraction"] for i in infos[name]]))
                r["steps"] = int(infos[name][0]["steps"])
            records += recs
    return records


def segmentation_head_factory(domain_name, cfg, num_classes):
    """``fn(encoder) -> head``: the domain's segmentation head (core default when no domain/config)."""

    def make(encoder):
        if cfg is not None and domain_name:
            return get_domain(domain_name).head("segmentation", encoder, num_classes, cfg)
        return default_head("segmentation", encoder, num_classes, Config())

    return make


def _segmentation_records(
    protocol, name, frac, n_train, mte, preds, baselines, n_boot, gain_vs, num_classes, ignore_background
) -> list[dict]:
    """Records of one encoder's segmentation runs at one fraction: means, intervals and gains."""

    def metric_fn(t, p):
        return segmentation_metrics(t, p, num_classes, ignore_background=ignore_background)

    stats = bootstrap_ci(mte, preds, metric_fn=metric_fn, n_boot=n_boot, seed=1234)
    vs = paired_gains(mte, preds, baselines, n_boot, seed=1234, metric_fn=metric_fn) if baselines else {}
    return [
        {
            "encoder": name,
            "protocol": protocol,
            "fraction": frac,
            "shots": None,
            "n_train": n_train,
            "n_test": int(mte.shape[0]),
            "seeds": len(preds),
            "metric": metric,
            "mean": stats[metric]["mean"],
            "ci_low": stats[metric]["ci_low"],
            "ci_high": stats[metric]["ci_high"],
            "per_seed": stats[metric]["per_seed"],
            **_vs_fields(vs.get(metric, {}), gain_vs),
        }
        for metric in SEGMENTATION_METRICS
    ]


def run_segmentation(
    protocol,
    encoders,
    head_factory,
    xtr,
    mtr,
    xte,
    mte,
    wl,
    num_classes,
    fracs,
    n_seeds,
    n_boot,
    gain_vs,
    source,
    kwargs,
    ignore_background=True,
    sup=None,
):
    mode = "lora" if protocol == "lora" else "full"
    records = []
    for frac in fracs:
        preds: dict[str, list] = {name: [] for name in encoders}
        infos: dict[str, list] = {name: [] for name in encoders}
        n_train = None
        for seed in range(n_seeds):
            idx = random_fraction(xtr.shape[0], frac, seed=seed, source=source)
            n_train = int(idx.size)
            for name, m in encoders.items():
                enc = encoder_of(m)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    head = head_factory(enc)
                p, info = finetune_segmenter(
                    enc, head, xtr[idx], mtr[idx], xte, mode=mode, seed=seed, wavelengths=wl, **kwargs
                )
                preds[name].append(p)
                infos[name].append(info)
            if sup is not None:
                sup.scores(frac, seed, idx, num_classes)
        preds = _grouped(preds)
        for name in preds:
            base = _baseline_scores(name, preds, sup, frac) if gain_vs else {}
            recs = _segmentation_records(
                protocol, name, frac, n_train, mte, preds[name], base, n_boot, gain_vs, num_classes, ignore_background
            )
            for r in recs:
                r["trainable_fraction"] = float(np.mean([i["encoder_trainable_fraction"] for i in infos[name]]))
                r["steps"] = int(infos[name][0]["steps"])
            records += recs
    return records
