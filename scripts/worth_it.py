"""Is pretraining worth it on PneumoniaMNIST, with the defaults, against what a researcher would otherwise do?

Pretrains with nothing but ``--domain medical --data pneumoniamnist.npz --objective X --steps N`` (the
recipe picks everything else from the data and the machine), for each objective and pretraining seed;
the other objectives get the CPU seconds the first one took (``domainfm.steps_for_cpu_budget``). Then one
``domainfm.evaluate`` call compares every objective, its pretraining seeds pooled, against a random-init
encoder and a supervised ResNet-18 trained from scratch on the same labels, with linear and fine-tune
protocols at 1%, 10% and 100% labels on the official test split (probe settings chosen on the training
labels only). Prints one table per protocol with the paired gains and what each side cost.

Usage:
    .venv/bin/python scripts/worth_it.py --out runs/worth_it                       # the measurement
    .venv/bin/python scripts/worth_it.py --out runs/worth_it --eval-only           # re-evaluate the runs
    .venv/bin/python scripts/worth_it.py --quick --out /tmp/worth_it               # smoke run (minutes)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from domainfm.demo import sample_data

ROOT = Path(__file__).resolve().parents[1]


def pretrain_config(npz: Path, out: Path, objective: str, steps: int, seed: int) -> dict:
    """What a user types: domain, data, objective and steps (plus the seed and the output folder)."""
    return {
        "domain": "medical",
        "out": str(out),
        "data": {"path": str(npz)},
        "objective": {"name": objective},
        "train": {"steps": steps, "seed": seed, "tensorboard": False},
    }


def run_pretraining(args, npz: Path) -> dict[str, list[Path]]:
    """Checkpoints per objective (one per pretraining seed); later objectives at the first one's CPU seconds."""
    import domainfm
    from domainfm.train.checkpoint import list_checkpoints, load_card

    ckpts: dict[str, list[Path]] = {}
    budget: dict[int, float] = {}
    for i, objective in enumerate(args.objectives):
        ckpts[objective] = []
        for seed in args.seed_list:
            run = args.out / f"{objective.replace('+', '_')}-seed{seed}"
            done = list_checkpoints(run) if run.is_dir() else []
            if args.eval_only or (done and load_card(done[-1]).get("compute", {}).get("steps")):
                ckpts[objective].append(done[-1])
                continue
            cfg = pretrain_config(npz, run, objective, args.steps, seed)
            if i > 0 and args.equal_cpu and seed in budget:
                cfg = domainfm.steps_for_cpu_budget(cfg, budget[seed], data=None)
            started = time.perf_counter()
            ckpt = domainfm.pretrain(cfg, exist_ok="overwrite")
            compute = load_card(ckpt)["compute"]
            if i == 0:
                budget[seed] = compute["cpu_seconds"]
            print(
                f"{objective} seed {seed}: {compute['steps']} steps, {compute['wall_seconds']} s wall, "
                f"{compute['cpu_seconds']} CPU s ({time.perf_counter() - started:.0f} s with set-up) -> {ckpt}",
                flush=True,
            )
            ckpts[objective].append(ckpt)
    return ckpts


def _cell(r: dict | None, key: str | None = None) -> str:
    if r is None:
        return "-"
    if key is None:
        return f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
    g = (r.get("vs") or {}).get(key)
    if not g:
        return "-"
    mark = "**" if g["low"] > 0 else ""
    return f"{mark}{g['gain']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]{mark}"


def print_tables(results: dict, metric: str = "auroc") -> str:
    """Markdown: per protocol and label fraction, each objective against random init and supervised."""
    lines = []
    first = next(iter(results.values()))
    for protocol in first.meta["protocols"]:
        lines += [f"\n### {protocol} ({metric.upper()}, official test split)\n"]
        lines += [
            "| labels | objective | pretrained | random init | supervised | gain vs random | gain vs supervised |"
        ]
        lines += ["|---|---|---|---|---|---|---|"]
        for frac in first.meta["fractions"]:
            for objective, res in results.items():
                r = res.get("pretrained", protocol, metric, fraction=frac)
                rand = res.get("random", protocol, metric, fraction=frac)
                sup = res.get("supervised", "supervised", metric, fraction=frac)
                lines.append(
                    f"| {100 * frac:g}% | {objective} | {_cell(r)} | {_cell(rand)} | {_cell(sup)} | "
                    f"{_cell(r, 'random')} | {_cell(r, 'supervised')} |"
                )
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", type=Path, default=sample_data("medical", "pneumoniamnist.npz"))
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "worth_it")
    p.add_argument("--objectives", default="dino,mae", help="the first sets the CPU budget of the others")
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--pretrain-seeds", type=int, default=2)
    p.add_argument("--only-seed", type=int, default=None, help="pretrain this seed only (run seeds in parallel)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of this process")
    p.add_argument("--device", default=None, help="evaluation device (cuda: encoders and baseline on the GPU)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--fractions", default="0.01,0.1,1")
    p.add_argument("--protocols", default="linear,finetune")
    p.add_argument("--no-equal-cpu", dest="equal_cpu", action="store_false", help="same steps for every objective")
    p.add_argument("--eval-only", action="store_true", help="reuse the pretrained checkpoints in --out")
    p.add_argument("--pretrain-only", action="store_true", help="stop after pretraining (evaluate elsewhere)")
    p.add_argument("--quick", action="store_true", help="smoke run: 40 steps, 1 seed, small caps")
    args = p.parse_args(argv)
    args.objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    caps: dict = {}
    if args.quick:
        args.steps, args.pretrain_seeds, args.seeds = 40, 1, 1
        caps = {"max_train": 200, "max_test": 100, "supervised_kwargs": {"max_epochs": 2}}
    args.seed_list = [args.only_seed] if args.only_seed is not None else list(range(args.pretrain_seeds))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.npz is None or not args.npz.is_file():
        print(
            f"{args.npz or 'medical/pneumoniamnist.npz'}: PneumoniaMNIST not found (set DOMAINFM_DATA)", file=sys.stderr
        )
        return 2
    npz = args.npz.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    from domainfm.eval import evaluate

    ckpts = run_pretraining(args, npz)
    if args.pretrain_only:
        return 0
    results, compute = {}, {}
    for objective in args.objectives:
        started = time.perf_counter()
        results[objective] = evaluate(
            ckpts[objective],  # its pretraining seeds pooled into the intervals
            data=npz,
            protocol=args.protocols,
            fractions=args.fractions,
            seeds=args.seeds,
            baseline="random,supervised",
            out=args.out / f"eval-{objective.replace('+', '_')}",
            cache_dir=args.out / "cache",  # the supervised runs are trained once, for every objective
            n_boot=200 if args.quick else 1000,
            device=args.device,
            **caps,
        )
        compute[objective] = results[objective].meta["compute"]
        print(f"evaluate {objective}: {time.perf_counter() - started:.0f} s", flush=True)
    text = print_tables(results)
    summary = {"objectives": args.objectives, "checkpoints": {k: [str(c) for c in v] for k, v in ckpts.items()}}
    summary.update(compute=compute, tables=text)
    name = "summary-" + "-".join(o.replace("+", "_") for o in args.objectives) + ".json"
    (args.out / name).write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(compute, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
