"""Same-budget comparison of pretraining objectives on PneumoniaMNIST (official splits), frozen probes.

Pretrains one small ViT per objective (``dino``, ``mae``, ``mae+contrastive`` by default) on the
unlabelled train images of ``pneumoniamnist.npz`` with the same number of optimizer steps and images
per step (or, with ``--cpu-seconds``, the same CPU time: ``domainfm.steps_for_cpu_budget``), then
runs ``domainfm.evaluate`` once on the first objective's checkpoint with the others and a random-init
encoder as baselines: linear + kNN probes at 1%, 10%, 100% labels, 3 seeds, bootstrap 95% intervals,
on the official test split, every encoder pooled with ``--pool`` (default ``token+avg``). Prints the
table and the pass/fail of the dino goals.

Usage:
    .venv/bin/python scripts/ssl_compare.py --out runs/ssl_compare --steps 800 --threads 1
    .venv/bin/python scripts/ssl_compare.py --objectives mae,mae+contrastive --cpu-seconds 1485 --pretrain-only
    .venv/bin/python scripts/ssl_compare.py --quick                  # smoke run (30 steps, 1 seed)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DOMAINFM_DATA", ROOT.parent / "shared" / "data"))

#: the small-image dino settings shared by the measurement scripts (configs/objectives/dino_small_images.yaml)
DINO_SMALL = yaml.safe_load((ROOT / "configs" / "objectives" / "dino_small_images.yaml").read_text())["objective"]

#: per-objective settings on top of the shared model/budget (objective.* keys; model.* under "model")
OBJECTIVES = {
    "dino": {"objective": dict(DINO_SMALL), "model": {"class_token": True}},
    "mae": {
        "objective": {"name": "mae", "mask_ratio": 0.75, "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 4}
    },
    "mae+contrastive": {
        "objective": {
            "name": "mae+contrastive",
            "mask_ratio": 0.75,
            "decoder_dim": 64,
            "decoder_depth": 1,
            "decoder_heads": 4,
            "proj_dim": 128,
            "proj_hidden_dim": 512,
        }
    },
    "mae+dino": {
        "objective": {
            "name": "mae+dino",
            "mask_ratio": 0.75,
            "decoder_dim": 64,
            "decoder_depth": 1,
            "decoder_heads": 4,
            "prototypes": 256,
            "head_hidden_dim": 256,
            "head_bottleneck_dim": 128,
            "head_bn": True,
            "teacher_temp": 0.05,
            "teacher_momentum": 0.99,
            "koleo_weight": 0.1,
            "global_crops": 2,
            "local_crops": 4,
            "global_crop_scale": [0.4, 1.0],
            "local_crop_scale": [0.1, 0.4],
            "local_crop_size": 12,
        },
        "model": {"class_token": True},
    },
}


def per_objective(text: str, name: str, cast):
    """``"800"`` -> 800 for every objective; ``"dino=450,mae=2000"`` -> the objective's own value."""
    if "=" not in text:
        return cast(text)
    table = dict(part.split("=", 1) for part in text.split(","))
    if name not in table:
        raise SystemExit(f"no value for {name} in {text!r}")
    return cast(table[name])


def config(npz: Path, out: Path, name: str, args) -> dict:
    extra = OBJECTIVES[name]
    steps, lr = per_objective(args.steps, name, int), per_objective(args.lr, name, float)
    objective = dict(extra["objective"])
    if "dino" in name:
        objective["teacher_temp_warmup_steps"] = max(1, int(0.3 * steps))
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
            "patch_size": 4,
            "depth": args.depth,
            "embed_dim": args.embed_dim,
            "num_heads": 3,
            **extra.get("model", {}),
        },
        "objective": objective,
        "train": {
            "steps": steps,
            "batch_size": args.batch_size,
            "lr": lr,
            "warmup_steps": max(1, steps // 10),
            "log_every": max(1, steps // 40),
            "ckpt_every": steps,
            "seed": 0,
            "progress": False,
            "tensorboard": False,
            "threads": args.threads,
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", type=Path, default=DATA / "medical" / "pneumoniamnist.npz")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "ssl_compare")
    p.add_argument(
        "--objectives", default="dino,mae,mae+contrastive", help="the first one is evaluated against the rest"
    )
    p.add_argument("--steps", default="800", help="one number, or per objective: dino=450,mae=2000")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--cpu-seconds",
        type=float,
        default=None,
        help="equal CPU budget: each objective's steps = this / its CPU seconds per step (timed on 20 steps)",
    )
    p.add_argument("--lr", default="1e-3", help="one number, or per objective: dino=5e-4,mae=1.5e-3")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--embed-dim", type=int, default=96)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--pool",
        default="token+avg",
        choices=("token+avg", "token", "avg"),
        help="probe features of every encoder: token+avg (DINO's linear eval; avg without a class token), token, avg",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--eval-only", action="store_true", help="reuse the pretrained checkpoints in --out")
    p.add_argument("--eval-name", default="eval", help="sub-folder of --out for the report")
    p.add_argument("--pretrain-only", action="store_true", help="stop after pretraining (run objectives in parallel)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.seeds = "30", 1

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import domainfm
    from domainfm.eval import evaluate
    from domainfm.train.checkpoint import list_checkpoints

    npz = args.npz.resolve()
    if not npz.is_file():
        print(f"{npz}: PneumoniaMNIST not found (set DOMAINFM_DATA)", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.objectives.split(",") if n.strip()]
    ckpts, seconds = {}, {}
    for name in names:
        run = args.out / name.replace("+", "_")
        if args.eval_only:
            ckpts[name] = list_checkpoints(run)[-1]
            seconds[name] = json.loads((run / "budget.json").read_text()) if (run / "budget.json").is_file() else None
            continue
        cfg = config(npz, run, name, args)
        if args.cpu_seconds:
            cfg = domainfm.steps_for_cpu_budget(cfg, args.cpu_seconds)
            print(f"{name}: {cfg['train']['steps']} steps for {args.cpu_seconds} CPU s", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        ckpts[name] = domainfm.pretrain(cfg)
        # CPU seconds of this process (all threads): the budget, independent of other jobs on the machine
        seconds[name] = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
        (run / "budget.json").write_text(json.dumps(seconds[name]))
        print(f"{name}: pretraining {seconds[name]} -> {ckpts[name]}", flush=True)
    if args.pretrain_only:
        return 0
    t1 = time.perf_counter()
    res = evaluate(
        ckpts[names[0]],
        data=npz,
        protocol="linear,knn",
        fractions="0.01,0.1,1",
        seeds=args.seeds,
        baseline=["random"] + [str(ckpts[n]) for n in names[1:]],
        out=args.out / args.eval_name,
        n_boot=300 if args.quick else 1000,
        test_split="test",
        pool=args.pool,
    )
    print((args.out / args.eval_name / "report.md").read_text())
    goals = []
    for r in res:
        if r["encoder"] == "pretrained" and r["protocol"] == "linear" and r["metric"] == "auroc":
            goals.append(
                {
                    "fraction": r["fraction"],
                    "auroc": r["mean"],
                    "gain": r["gain"],
                    "gain_ci": [r["gain_low"], r["gain_high"]],
                    "gain_ci_above_0": r["gain_low"] > 0,
                }
            )
    full = [g for g in goals if g["fraction"] == 1.0]
    summary = {
        "objectives": names,
        "checkpoints": {k: str(v) for k, v in ckpts.items()},
        "pretrain_budget": seconds,
        "eval_seconds": round(time.perf_counter() - t1, 1),
        "steps": args.steps,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seeds": args.seeds,
        "pool": res.meta["pool"],
        "linear_auroc_goals": goals,
        "gain_above_0_everywhere": bool(goals) and all(g["gain_ci_above_0"] for g in goals),
        "auroc_100pct_at_least_0.944": bool(full) and full[0]["auroc"] >= 0.944,
    }
    (args.out / args.eval_name / "goals.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
