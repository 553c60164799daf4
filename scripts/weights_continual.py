"""Measured: continual pretraining from a kit checkpoint trained on another source vs from scratch.

1. ``source``: MAE on generated shapes (the synthetic domain; no X-rays), ``--steps`` steps.
2. ``scratch``: MAE on the unlabelled PneumoniaMNIST train images, ``--steps`` steps, random init.
3. ``continual``: the same run with ``model.init`` = the source checkpoint (same step budget as scratch).

Then one ``domainfm.evaluate`` call (linear probe and kNN, label fractions, seeds, bootstrap intervals) on
the official test split embeds all four encoders (continual, scratch, source only, random init) with the
same splits and seeds, and prints the comparison.

Usage:
    .venv/bin/python scripts/weights_continual.py --threads 1 --out runs/weights_continual
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NPZ = (
    Path(os.environ.get("DOMAINFM_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    / "medical"
    / "pneumoniamnist.npz"
)


def _model(args) -> dict:
    return {
        "name": "vit-tiny",
        "patch_size": 4,
        "depth": args.depth,
        "embed_dim": args.embed_dim,
        "num_heads": args.num_heads,
    }


def _train(args, steps: int, **extra) -> dict:
    return {
        "steps": steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_steps": max(1, steps // 10),
        "log_every": max(1, steps // 20),
        "ckpt_every": steps,
        "seed": 0,
        "progress": False,
        "tensorboard": False,
        **extra,
    }


def _objective() -> dict:
    return {
        "name": "mae",
        "mask_ratio": 0.75,
        "decoder_dim": 64,
        "decoder_depth": 1,
        "decoder_heads": 4,
        "norm_pix_loss": True,
    }


def source_config(args) -> dict:
    return {
        "domain": "synthetic",
        "out": str(args.out / "source"),
        "data": {"img_size": 28, "options": {"num_samples": 2048, "channels": 1}},
        "model": _model(args),
        "objective": _objective(),
        "train": _train(args, args.source_steps),
    }


def pneumonia_config(args, name: str, init: Path | None = None) -> dict:
    model = _model(args) if init is None else {"patch_size": 4, "init": str(init)}
    return {
        "domain": "medical",
        "out": str(args.out / name),
        "data": {
            "path": str(args.npz),
            "img_size": 28,
            "cache": "memory",
            "options": {"spatial_dims": 2, "modality": "xray"},
        },
        "model": model,
        "objective": _objective(),
        "train": _train(args, args.steps, layer_decay=args.layer_decay if init is not None else 1.0),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "weights_continual")
    p.add_argument("--steps", type=int, default=500, help="PneumoniaMNIST steps (scratch and continual alike)")
    p.add_argument("--source-steps", type=int, default=500, help="steps of the shapes (source) pretraining")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--embed-dim", type=int, default=96)
    p.add_argument("--num-heads", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--layer-decay", type=float, default=1.0, help="train.layer_decay of the continual run")
    p.add_argument("--fractions", default="0.01,0.1,1")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reuse", action="store_true", help="reuse the source and scratch checkpoints already in --out")
    p.add_argument("--name", default="continual", help="sub-folder of the continual run (and eval-<name>)")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import domainfm
    from domainfm.eval import evaluate
    from domainfm.train.checkpoint import resolve_checkpoint

    args.npz = args.npz.resolve()
    if not args.npz.is_file():
        print(f"{args.npz}: PneumoniaMNIST not found (../shared/data absent)")
        return 2
    times = {}
    t = time.perf_counter()
    source = resolve_checkpoint(args.out / "source") if args.reuse else domainfm.pretrain(source_config(args))
    times["source"] = time.perf_counter() - t
    t = time.perf_counter()
    scratch = (
        resolve_checkpoint(args.out / "scratch") if args.reuse else domainfm.pretrain(pneumonia_config(args, "scratch"))
    )
    times["scratch"] = time.perf_counter() - t
    t = time.perf_counter()
    continual = domainfm.pretrain(pneumonia_config(args, args.name, init=source))
    times["continual"] = time.perf_counter() - t
    t = time.perf_counter()
    res = evaluate(
        continual,
        data=args.npz,
        protocol="linear,knn",
        fractions=args.fractions,
        seeds=args.seeds,
        baseline=["random", str(scratch), str(source)],
        out=args.out / f"eval-{args.name}",
        n_boot=1000,
    )
    times["eval"] = time.perf_counter() - t

    def label(name: str) -> str:
        if name in ("pretrained", "random"):
            return {"pretrained": "continual"}.get(name, name)
        return "scratch" if name in (scratch.name, str(scratch)) else "source"

    rows = []
    for r in res:
        if r["metric"] not in ("auroc", "balanced_accuracy"):
            continue
        rows.append(
            {
                "encoder": label(r["encoder"]),
                "protocol": r["protocol"],
                "fraction": r["fraction"],
                "metric": r["metric"],
                "mean": r["mean"],
                "ci": [r["ci_low"], r["ci_high"]],
            }
        )
    summary = {
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "steps": args.steps,
        "source_steps": args.source_steps,
        "batch_size": args.batch_size,
        "layer_decay": args.layer_decay,
        "encoders": [label(e) for e in res.meta["encoders"]],
        "checkpoints": {"continual": str(continual), "scratch": str(scratch), "source": str(source)},
        "rows": rows,
    }
    (args.out / f"summary-{args.name}.json").write_text(json.dumps(summary, indent=2))
    for r in rows:
        print(
            f"{r['protocol']:6s} {100 * r['fraction']:5g}% {r['metric']:17s} {r['encoder']:10s} "
            f"{r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
        )
    print(json.dumps(summary["seconds"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
