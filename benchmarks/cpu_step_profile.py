"""Where a CPU pretraining step's wall time goes: the kit's MAE step against MONAI's, same shapes, same run.

Two parts, both at the default torch thread count unless ``--threads`` says otherwise:

- **profile**: ``torch.profiler`` (CPU) over the kit's MAE step, MONAI's ``MaskedAutoEncoderViT`` with torch's
  default AdamW and MONAI with fused AdamW, interleaved rounds; for each, wall and CPU seconds per step, aten
  calls per step and the top ops of its least disturbed round, with how much each op grew in its most disturbed
  round (ops made of many small OpenMP regions grow most when the machine is busy). ``--cprofile`` adds the top
  Python functions.
- **sweep**: the same three steps in child processes, one per OpenMP wait policy x thread count (``torch:2`` =
  libgomp's default spin-then-sleep, ``passive:2`` = ``OMP_WAIT_POLICY=PASSIVE``, ...), interleaved rounds, wall
  clock first and CPU seconds second. The wait policy is read once, when torch loads libgomp, so each setting
  needs its own process.

    python benchmarks/cpu_step_profile.py                      # 2D quick shapes: profile + sweep
    python benchmarks/cpu_step_profile.py --case 3d --top 25 --cprofile
    python benchmarks/cpu_step_profile.py --no-profile --sweep torch:2,passive:2,torch:1 --rounds 5 --hog 1
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pretrain_throughput as pt  # noqa: E402

#: the variants profiled: (implementation, fused AdamW: None = its default, objective)
VARIANTS = {
    "kit MAE": ("domainfm", None, "mae"),
    "MONAI": ("monai", None, "mae"),
    "MONAI+fused": ("monai", True, "mae"),
}
#: OpenMP settings of the sweep: the environment each child process starts with (libgomp reads it once, at load)
POLICY_ENV = {
    "torch": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
    "spin1k": {"GOMP_SPINCOUNT": "1000"},
}


def load() -> float:
    return os.getloadavg()[0]


def build_steps(case: dict, variants: dict, bf16: bool = False) -> dict:
    device = torch.device("cpu")
    return {
        name: pt.build_step(kind, case, device, False, fused, objective, bf16)
        for name, (kind, fused, objective) in variants.items()
    }


def profiled_round(step, steps: int) -> dict:
    """One profiled run of ``steps`` steps: wall and CPU seconds per step, and self time / calls per op."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        wall, cpu = (time.perf_counter() - w0) / steps, (time.process_time() - c0) / steps
    ops = {e.key: (e.self_cpu_time_total / 1e6 / steps, e.count / steps) for e in prof.key_averages()}
    return {"wall": wall, "cpu": cpu, "ops": ops, "calls": sum(c for _, c in ops.values())}


def print_profile(name: str, best: dict, worst: dict, top: int) -> None:
    print(
        f"\n{name}: wall {best['wall'] * 1e3:.1f} ms/step, CPU {best['cpu'] * 1e3:.1f} ms/step in the least disturbed "
        f"round (most disturbed: wall {worst['wall'] * 1e3:.1f}, CPU {worst['cpu'] * 1e3:.1f}); "
        f"{best['calls']:.0f} aten/profiler events per step"
    )
    total = sum(t for t, _ in best["ops"].values())
    print(f"  {'op':52s} {'ms/step':>8s} {'share':>6s} {'calls/step':>10s} {'worst/best':>10s}")
    ranked = sorted(best["ops"].items(), key=lambda kv: -kv[1][0])[:top]
    for op, (t, calls) in ranked:
        grown = worst["ops"].get(op, (float("nan"), 0))[0] / t if t > 0 else float("nan")
        print(f"  {op[:52]:52s} {t * 1e3:8.2f} {t / total:6.1%} {calls:10.1f} {grown:10.2f}")


def profile_section(case: dict, steps: int, rounds: int, top: int, bf16: bool = False) -> dict:
    built = build_steps(case, VARIANTS, bf16)
    for step in built.values():
        for _ in range(2):
            step()
    runs = {name: [] for name in built}
    for _ in range(rounds):  # interleaved: a burst of load from other processes hits every variant alike
        for name, step in built.items():
            runs[name].append(profiled_round(step, steps))
    out = {}
    for name, rs in runs.items():
        rs.sort(key=lambda r: r["wall"])
        print_profile(name, rs[0], rs[-1], top)
        out[name] = {"wall_s": rs[0]["wall"], "cpu_s": rs[0]["cpu"], "worst_wall_s": rs[-1]["wall"]}
    return out


def cprofile_section(case: dict, steps: int, top: int) -> None:
    for name, step in build_steps(case, {k: VARIANTS[k] for k in ("kit MAE", "MONAI+fused")}).items():
        step()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(steps):
            step()
        prof.disable()
        print(f"\ncProfile, {name} ({steps} steps), top {top} by own time:")
        pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def child(case: dict, steps: int, rounds: int) -> None:
    """Print JSON ``{variant: [best wall s/step, its CPU s/step]}`` for the variants, interleaved rounds."""
    built = build_steps(case, VARIANTS)
    for step in built.values():
        for _ in range(2):
            step()
    best = {name: (float("inf"), 0.0) for name in built}
    for _ in range(rounds):
        for name, step in built.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                step()
            wall, cpu = (time.perf_counter() - w0) / steps, (time.process_time() - c0) / steps
            best[name] = min(best[name], (wall, cpu))
    print(json.dumps(best))


def run_child(args, policy: str, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICY_ENV[policy])
    cmd = [sys.executable, __file__, "--child", "--case", args.case, "--steps", str(args.steps), "--rounds", "1"]
    cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def sweep_section(args, case: dict) -> dict:
    """Each (policy, threads) in its own process, ``args.rounds`` interleaved rounds; best wall of each. With
    ``args.hog``, that many busy-looping processes run beside it (a machine shared with other jobs)."""
    settings = [(p, int(t)) for p, t in (s.split(":") for s in args.sweep.split(","))]
    best: dict = {}
    loads = []
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hog)]
    try:
        for _ in range(args.rounds):
            for policy, threads in settings:
                loads.append(load())
                got = run_child(args, policy, threads)
                for name, wc in got.items():
                    key = (policy, threads, name)
                    best[key] = min(best.get(key, (float("inf"), 0.0)), tuple(wc))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    batch = case["batch"]
    print(
        f"\nsweep: {args.rounds} interleaved rounds of one process per setting, {args.steps} steps per variant, "
        f"best wall of each, {args.hog} busy-looping processes beside it; load average {min(loads):.2f} to "
        f"{max(loads):.2f}"
    )
    print(
        f"{'setting':12s} "
        + " ".join(f"{n + ' /s':>14s}" for n in VARIANTS)
        + "  "
        + " ".join(f"{n + ' CPU ms':>18s}" for n in VARIANTS)
    )
    for policy, threads in settings:
        rates = " ".join(f"{batch / best[(policy, threads, n)][0]:14.2f}" for n in VARIANTS)
        cpus = " ".join(f"{best[(policy, threads, n)][1] * 1e3:18.1f}" for n in VARIANTS)
        print(f"{policy + ':' + str(threads):12s} {rates}  {cpus}")
    return {f"{p}:{t}:{n}": v for (p, t, n), v in best.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=("2d", "3d"), default="2d", help="the pretrain_throughput --quick case")
    ap.add_argument("--steps", type=int, default=3, help="steps per profiled round / timed round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--bf16", action="store_true", help="profile under bf16 autocast (the sweep stays fp32)")
    ap.add_argument("--cprofile", action="store_true", help="also the top Python functions (cProfile)")
    ap.add_argument("--sweep", default="torch:2,passive:2,torch:1", help="policy:threads,... ('' skips)")
    ap.add_argument("--hog", type=int, default=0, help="busy-looping processes beside the sweep (a shared machine)")
    ap.add_argument("--quick", action="store_true", help="one round of 2 steps, sweep torch:2,passive:2 (make bench)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.top, args.sweep = 1, 2, 10, "torch:2,passive:2"
    if args.threads:
        torch.set_num_threads(args.threads)
    case = pt.QUICK_CASES[0 if args.case == "2d" else 1]
    if args.child:
        child(case, args.steps, args.rounds)
        return {}
    print(
        f"{case['name']}, batch {case['batch']}; torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: libgomp spins, then sleeps)')}, "
        f"load average {load():.2f}"
    )
    out = {}
    if args.profile:
        out["profile"] = profile_section(case, args.steps, args.rounds, args.top, args.bf16)
    if args.cprofile:
        cprofile_section(case, args.steps, args.top)
    if args.sweep:
        out["sweep"] = sweep_section(args, case)
    print(f"load average at the end {load():.2f}")
    return out


if __name__ == "__main__":
    main()
