"""Real check: does MAE pretraining on unlabelled PneumoniaMNIST X-rays beat a random-init encoder?

Pretrains a small ViT (patch 4 on 28x28, MAE) on the *train images* of
``../shared/data/medical/pneumoniamnist.npz`` without their labels, on CPU, then runs
``domainfm.evaluate`` (linear probe and kNN, label fractions 1% / 10% / 100%, 3 seeds) on the
official test split against a randomly initialised encoder of the same shape, and prints the table
and whether the pretrained encoder wins by more than the interval.

Usage:
    .venv/bin/python scripts/pneumonia_eval.py --out runs/pneumonia_eval            # ~minutes on CPU
    .venv/bin/python scripts/pneumonia_eval.py --quick                              # smoke run
    .venv/bin/python scripts/pneumonia_eval.py --checkpoint runs/pneumonia_eval/pretrain  # re-evaluate
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NPZ = ROOT / ".." / "shared" / "data" / "medical" / "pneumoniamnist.npz"


def pretrain_config(npz: Path, out: Path, steps: int, args) -> dict:
    return {
        "domain": "medical",
        "out": str(out),
        "data": {
            "path": str(npz),
            "img_size": 28,
            "cache": "memory",
            "options": {"spatial_dims": 2, "modality": "xray"},
        },
        "model": {
            "name": "vit-tiny",
            "patch_size": args.patch_size,
            "depth": args.depth,
            "embed_dim": args.embed_dim,
            "num_heads": args.num_heads,
        },
        "objective": {
            "name": args.objective,
            "mask_ratio": args.mask_ratio,
            "decoder_dim": 64,
            "decoder_depth": 1,
            "decoder_heads": 4,
            "norm_pix_loss": True,
        },
        "train": {
            "steps": steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "warmup_steps": max(1, steps // 10),
            "log_every": max(1, steps // 20),
            "ckpt_every": steps,
            "seed": 0,
            "progress": False,
            "tensorboard": False,
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "pneumonia_eval")
    p.add_argument("--checkpoint", type=Path, default=None, help="skip pretraining, evaluate this checkpoint")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="60 steps, 1 seed, 300 bootstrap resamples")
    p.add_argument("--objective", default="mae")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--embed-dim", type=int, default=96)
    p.add_argument("--num-heads", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--fractions", default="0.01,0.1,1")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--protocol", default="linear,knn")
    p.add_argument("--test-split", default="test", help="test (official split) or val (same distribution as train)")
    p.add_argument("--eval-name", default="eval", help="sub-folder of --out for the report")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy box)")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import domainfm
    from domainfm.eval import evaluate

    npz = args.npz.resolve()
    if not npz.is_file():
        print(f"{npz}: PneumoniaMNIST not found (../shared/data absent)", file=sys.stderr)
        return 2
    steps = 60 if args.quick else args.steps
    seeds = 1 if args.quick else args.seeds
    t0 = time.perf_counter()
    if args.checkpoint is None:
        torch.manual_seed(0)
        ckpt = domainfm.pretrain(pretrain_config(npz, args.out / "pretrain", steps, args))
    else:
        ckpt = args.checkpoint
    t_pre = time.perf_counter() - t0
    print(f"pretraining: {t_pre:.0f} s -> {ckpt}")
    t1 = time.perf_counter()
    res = evaluate(
        ckpt,
        data=npz,
        protocol=args.protocol,
        fractions=args.fractions,
        seeds=seeds,
        baseline="random",
        out=args.out / args.eval_name,
        n_boot=300 if args.quick else 1000,
        test_split=args.test_split,
    )
    t_eval = time.perf_counter() - t1
    print((args.out / args.eval_name / "report.md").read_text())

    verdicts = []
    for r in res:
        if r["encoder"] != "pretrained" or r["metric"] not in ("auroc", "balanced_accuracy"):
            continue
        base = res.get("random", r["protocol"], r["metric"], fraction=r["fraction"])
        beats_gain = r["gain_low"] > 0
        disjoint = r["ci_low"] > base["ci_high"]
        verdicts.append(
            {
                "protocol": r["protocol"],
                "fraction": r["fraction"],
                "metric": r["metric"],
                "pretrained": r["mean"],
                "random": base["mean"],
                "gain": r["gain"],
                "gain_ci": [r["gain_low"], r["gain_high"]],
                "gain_ci_above_0": beats_gain,
                "intervals_disjoint": disjoint,
            }
        )
        print(
            f"{r['protocol']:7s} {100 * r['fraction']:5g}% {r['metric']:18s} pretrained {r['mean']:.3f} "
            f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] vs random {base['mean']:.3f} "
            f"[{base['ci_low']:.3f}, {base['ci_high']:.3f}]  gain {r['gain']:+.3f} "
            f"[{r['gain_low']:+.3f}, {r['gain_high']:+.3f}]  {'WIN' if beats_gain and disjoint else 'no clear win'}"
        )
    summary = {
        "checkpoint": str(ckpt),
        "pretrain_seconds": round(t_pre, 1),
        "eval_seconds": round(t_eval, 1),
        "steps": steps,
        "seeds": seeds,
        "verdicts": verdicts,
        "all_win": all(v["gain_ci_above_0"] and v["intervals_disjoint"] for v in verdicts),
    }
    (args.out / args.eval_name / "verdict.json").write_text(json.dumps(summary, indent=2))
    print(
        f"evaluation: {t_eval:.0f} s; pretrained beats random by more than the interval everywhere: "
        f"{summary['all_win']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
