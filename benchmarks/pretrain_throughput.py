"""MAE pretraining throughput: domainfm vs MONAI's MaskedAutoEncoderViT, same shapes, same run.

Measures optimizer steps (forward + backward + AdamW) on random data and prints, wall clock first, images/s
(volumes/s in 3D) for both and their ratio, then CPU seconds per step; on the CPU the achieved GFLOP/s (FLOPs
counted by ``torch.utils.flop_counter``) against this CPU's peak, on CUDA the model FLOP utilisation (MFU)
against the bf16 matmul peak measured on this GPU in the same run.

    python benchmarks/pretrain_throughput.py            # vit-base/16 @ 224 (2D) and 96^3 (3D)
    python benchmarks/pretrain_throughput.py --quick    # small shapes, runs on a laptop CPU in ~2 min
    python benchmarks/pretrain_throughput.py --quick --modes eager,bf16,compile --check-steps 20
    python benchmarks/pretrain_throughput.py --quick --omp-wait torch   # libgomp's default spin-wait

It runs under ``OMP_WAIT_POLICY=PASSIVE`` by default (``--omp-wait``), as the kit's command line does: with
libgomp's default spin-wait, two torch threads on two cores shared with another busy process lose 4 to 10x of
their wall time (``benchmarks/cpu_step_profile.py`` measures it). The kit's ``dino`` objective is timed in the
same run (``--no-dino`` skips it) and set against the MAE steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from domainfm.models import build_encoder
from domainfm.ssl import DINO, MAE
from domainfm.train.distributed import adamw_kwargs


def measure_matmul_peak(device: torch.device, dtype=torch.bfloat16, n: int = 8192, iters: int = 20) -> float:
    """Achieved TFLOP/s of a large square matmul (the practical peak used for MFU)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t) / 1e12


def step_flops(step_fn) -> float:
    """FLOPs of one training step counted by PyTorch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step_fn()
    return float(counter.get_total_flops())


def monai_mae(case: dict):
    from monai.networks.nets import MaskedAutoEncoderViT

    model = MaskedAutoEncoderViT(
        in_channels=case["in_chans"],
        img_size=case["img_size"],
        patch_size=case["patch"],
        hidden_size=case["dim"],
        mlp_dim=4 * case["dim"],
        num_layers=case["depth"],
        num_heads=case["heads"],
        masking_ratio=0.75,
        decoder_hidden_size=case["dec_dim"],
        decoder_mlp_dim=4 * case["dec_dim"],
        decoder_num_layers=case["dec_depth"],
        decoder_num_heads=case["dec_heads"],
        spatial_dims=case["dims"],
        qkv_bias=True,
    )
    # Under bf16 autocast MONAI's forward writes the bf16 decoder_embed output into its fp32 mask-token
    # tensor with index_put, which raises ("Index put requires the source and destination dtypes match");
    # handing that output back as fp32 lets it run (the decoder blocks cast to bf16 again). No-op in fp32.
    model.decoder_embed.register_forward_hook(lambda module, args, out: out.float())
    return model


def ours_mae(case: dict):
    enc = build_encoder(
        "vit-base",
        patch_embed="3d" if case["dims"] == 3 else "2d",
        in_chans=case["in_chans"],
        img_size=case["img_size"],
        patch_size=case["patch"],
        depth=case["depth"],
        embed_dim=case["dim"],
        num_heads=case["heads"],
    )
    return MAE(
        enc,
        mask_ratio=0.75,
        decoder_dim=case["dec_dim"],
        decoder_depth=case["dec_depth"],
        decoder_heads=case["dec_heads"],
        norm_pix_loss=True,
    )


#: DINO views of the benchmark: the global crops are the case's images, the local crops half their side
DINO_LOCAL_CROPS = 4


def ours_dino(case: dict):
    """The kit's DINO (its default head: 4096 prototypes, 1024 hidden, 256 bottleneck; a small head for
    encoders narrower than 128) around the same encoder as :func:`ours_mae`; no collapse stop on random data."""
    enc = ours_mae(case).encoder
    small = case["dim"] < 128
    return DINO(
        enc,
        prototypes=64 if small else 4096,
        hidden_dim=64 if small else 1024,
        bottleneck_dim=16 if small else 256,
        stop_on_collapse=False,
    )


def dino_views(x: torch.Tensor, local_crops: int = DINO_LOCAL_CROPS) -> list[torch.Tensor]:
    """Multi-crop views of a batch: 2 global crops (``x`` and its flip) and ``local_crops`` crops of half the
    side (corners of ``x``), cut once outside the timed step like a data loader would."""
    half = [s // 2 for s in x.shape[2:]]
    views = [x, x.flip(-1).contiguous()]
    for i in range(local_crops):
        start = [(i >> k & 1) * h for k, h in enumerate(half)]
        views.append(x[(..., *[slice(a, a + h) for a, h in zip(start, half)])].contiguous())
    return views


def make_step(
    kind: str,
    model,
    x: torch.Tensor,
    device: torch.device,
    compile_: bool,
    fused: bool | None = None,
    bf16: bool | None = None,
):
    """One optimizer step as a closure. ``fused=None``: the kit gets its engine's AdamW (:func:`adamw_kwargs`:
    fused on CUDA and CPU), MONAI gets fused AdamW on CUDA and torch's default AdamW on CPU. A kit model with
    ``on_step_end`` (DINO's teacher EMA) has it called after each optimizer step, as the engine does.
    ``bf16=None``: bf16 autocast on CUDA only (the engine's ``amp: auto``); True / False force it for both."""
    if fused is None:
        kw = adamw_kwargs(device) if kind == "domainfm" else ({"fused": True} if device.type == "cuda" else {})
    else:
        kw = {"fused": True} if fused else {}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, **kw)
    use_bf16 = device.type == "cuda" if bf16 is None else bf16
    fwd = torch.compile(model) if compile_ else model
    after = getattr(model, "on_step_end", None) if kind == "domainfm" else None
    if kind == "domainfm" and isinstance(model, DINO):
        batch = {"views": dino_views(x)}

        def loss_fn():
            return fwd(batch)["loss"]
    elif kind == "domainfm":

        def loss_fn():
            return fwd({"image": x})["loss"]
    else:
        patchify = ours_mae_patchifier(x)

        def loss_fn():
            pred, mask = fwd(x)
            target = patchify(x)
            # MONAI returns patch predictions; the MAE loss on masked patches as in the paper
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
            per_patch = F.mse_loss(pred.float(), target.float(), reduction="none").mean(-1)
            return (per_patch * mask).sum() / mask.sum()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(1, 1000)
        return loss.detach()

    return step


def ours_mae_patchifier(x: torch.Tensor):
    dims = x.ndim - 2

    def patchify(t):
        # MONAI's decoder_pred emits patch_size^d * C values per patch in its own (c-last) order;
        # the loss only needs matching sizes for a fair timing, so use an unfold of the same size.
        p = CASE_PATCH[0]
        if dims == 2:
            u = F.unfold(t, kernel_size=p, stride=p)
            return u.transpose(1, 2)
        b, c = t.shape[:2]
        u = t.unfold(2, p, p).unfold(3, p, p).unfold(4, p, p)
        return u.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(b, -1, c * p**3)

    return patchify


CASE_PATCH = [16]


def build_step(
    kind: str,
    case: dict,
    device: torch.device,
    compile_: bool,
    fused: bool | None = None,
    objective: str = "mae",
    bf16: bool | None = None,
    seed_all: bool = False,
):
    """The step of ``make_step`` for ``case`` (weights and data from seed 0; with ``seed_all`` the random masks
    too, so that two builds give the same sequence of losses)."""
    torch.manual_seed(0)
    builder = monai_mae if kind == "monai" else ours_dino if objective == "dino" else ours_mae
    model = builder(case).to(device)
    x = torch.randn((case["batch"], case["in_chans"], *([case["img_size"]] * case["dims"])), device=device)
    CASE_PATCH[0] = case["patch"]
    step = make_step(kind, model, x, device, compile_, fused, bf16)
    if seed_all:
        torch.manual_seed(1)
    return step


def vit_base_cases(batch_2d: int, batch_3d: int) -> list[dict]:
    """The ViT-B/16 MAE cases every pretraining benchmark uses: 2D @224 and 3D @96^3."""
    return [
        dict(
            name="2D vit-base/16 @224",
            dims=2,
            in_chans=3,
            img_size=224,
            patch=16,
            dim=768,
            depth=12,
            heads=12,
            dec_dim=512,
            dec_depth=8,
            dec_heads=16,
            batch=batch_2d,
        ),
        # MONAI's 3D sin-cos embedding needs a decoder width divisible by 6: 384 instead of 512
        dict(
            name="3D vit-base/16 @96^3",
            dims=3,
            in_chans=1,
            img_size=96,
            patch=16,
            dim=768,
            depth=12,
            heads=12,
            dec_dim=384,
            dec_depth=8,
            dec_heads=12,
            batch=batch_3d,
        ),
    ]


#: the ``--quick`` cases: ViT-S/8 at 64 px (2D) and 32^3 (3D), small decoders; a laptop CPU runs them in a minute
QUICK_CASES = [
    dict(
        name="2D vit-s/8 @64",
        dims=2,
        in_chans=3,
        img_size=64,
        patch=8,
        dim=384,
        depth=6,
        heads=6,
        dec_dim=256,
        dec_depth=2,
        dec_heads=8,
        batch=16,
    ),
    dict(
        name="3D vit-s/8 @32^3",
        dims=3,
        in_chans=1,
        img_size=32,
        patch=8,
        dim=384,
        depth=6,
        heads=6,
        dec_dim=192,
        dec_depth=2,
        dec_heads=6,
        batch=4,
    ),
]


def time_steps(step, iters: int, device: torch.device, warmup: int = 0, clock: str = "wall") -> float:
    """Seconds per call of ``step`` over ``iters`` calls, after ``warmup`` untimed ones.

    ``clock="cpu"`` counts this process's CPU seconds (``time.process_time``) instead of wall time: with one
    torch thread on a shared, oversubscribed CPU it leaves out the time other processes held the core.
    """
    wall, cpu = time_wall_cpu(step, iters, device, warmup)
    return cpu if clock == "cpu" and device.type == "cpu" else wall


def time_wall_cpu(step, iters: int, device: torch.device, warmup: int = 0) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of this process)`` per call of ``step`` over ``iters`` calls."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - w0) / iters, (time.process_time() - c0) / iters


#: ``--modes``: fp32 eager, bf16 autocast, torch.compile, both
MODES = ("eager", "bf16", "compile", "compile+bf16")

#: ``--omp-wait``: the OpenMP environment the script runs under (libgomp reads it once, when torch loads it).
#: ``passive`` is what the kit's command line sets; ``torch`` leaves libgomp's default (spin, then sleep).
OMP_WAIT = {"passive": "PASSIVE", "torch": None}


def cpu_peak_gflops(threads: int) -> dict:
    """Theoretical fp32 and bf16 peak GFLOP/s of ``threads`` cores of this CPU, with the assumptions stated.

    Clock: ``cpu MHz`` of ``/proc/cpuinfo`` (the nominal clock; boost not counted). FLOP per cycle and core: 2 per
    FMA x fp32 lanes x FMA pipes: AVX-512 on AMD (Zen 4) runs as two 256-bit FMA pipes, 32; AVX-512 on Intel
    server cores has two 512-bit pipes, 64; AVX2, 32. ``avx512_bf16`` (``vdpbf16ps``: two bf16 products per fp32
    lane) doubles it for bf16 matmuls; without it bf16 gets no gain.
    """
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = next((float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")), float("nan"))
    flags = next((line.split(":")[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    amd = "AuthenticAMD" in info
    per_cycle = 64 if "avx512f" in flags and not amd else 32 if "avx2" in flags or "avx512f" in flags else 16
    fp32 = threads * per_cycle * mhz / 1e3
    bf16 = fp32 * (2 if "avx512_bf16" in flags else 1)
    note = (
        f"{threads} cores x {per_cycle} fp32 FLOP/cycle ({'AVX-512' if 'avx512f' in flags else 'AVX2'}"
        f"{', 2x256-bit FMA pipes' if amd and 'avx512f' in flags else ''}) x {mhz / 1e3:.2f} GHz nominal"
        f"{'; bf16 2x (avx512_bf16)' if 'avx512_bf16' in flags else ''}"
    )
    return {"fp32": fp32, "bf16": bf16, "note": note}


def matmul_step(dtype: torch.dtype, n: int = 1024, count: int = 8):
    """A step of ``count`` ``n x n`` matmuls and its FLOPs: the practical peak, timed among the other steps."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)

    def step():
        for _ in range(count):
            a @ b

    return step, 2.0 * n**3 * count


def loss_drift(case: dict, mode: str, objective: str, steps: int) -> tuple[float, float]:
    """Largest relative difference of the kit's loss between fp32 eager and ``mode`` over ``steps`` optimizer
    steps from the same seed and data, and that of the last step."""
    device = torch.device("cpu")
    losses = []
    for m in ("eager", mode):
        step = build_step("domainfm", case, device, "compile" in m, None, objective, "bf16" in m, seed_all=True)
        losses.append(torch.stack([step() for _ in range(steps)]).float())
    rel = (losses[1] - losses[0]).abs() / losses[0].abs().clamp_min(1e-12)
    return float(rel.max()), float(rel[-1])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (CPU-friendly)")
    ap.add_argument("--compile", action="store_true", help="same as --modes compile")
    ap.add_argument("--bf16", action="store_true", help="same as --modes bf16 (bf16 autocast on the CPU too)")
    ap.add_argument("--modes", default=None, help=f"comma list of {', '.join(MODES)} (default: eager)")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every variant; best of each")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-dino", dest="dino", action="store_false", help="skip the dino objective's step")
    ap.add_argument("--no-flops", dest="flops", action="store_false", help="skip FLOP counting")
    ap.add_argument(
        "--check-steps",
        type=int,
        default=0,
        help="for every mode but eager: the kit's loss over this many steps against fp32 eager (20 is a fair check)",
    )
    ap.add_argument(
        "--omp-wait",
        choices=tuple(OMP_WAIT),
        default="passive",
        help="OpenMP wait policy: passive (the kit's command line) or torch (libgomp's default spin)",
    )
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="which clock ranks the repeats: wall (default) or CPU seconds of this process",
    )
    args = ap.parse_args(argv)
    modes = [m for m in (args.modes or "").split(",") if m]
    modes += [m for m, on in (("bf16", args.bf16), ("compile", args.compile)) if on and m not in modes]
    args.modes = modes or ["eager"]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        ap.error(f"--modes: unknown {bad}; choose from {', '.join(MODES)}")
    return args


def reexec_with_omp_wait(policy: str, argv: list[str], script: str = __file__) -> None:
    """Start ``script`` again under the OpenMP wait ``policy`` (a key of :data:`OMP_WAIT`) when the environment
    differs: libgomp reads it once, when torch loads it, so it cannot change in a running process."""
    want, have = OMP_WAIT[policy], os.environ.get("OMP_WAIT_POLICY")
    if (want or None) == (have or None) or os.environ.get("_DOMAINFM_BENCH_REEXEC"):
        return
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({"_DOMAINFM_BENCH_REEXEC": "1", **({"OMP_WAIT_POLICY": want} if want else {})})
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, script, *argv], env)


def cases_for(args, device: torch.device) -> tuple[list[dict], int, int]:
    if args.quick:
        return QUICK_CASES, args.iters or 5, 2
    cuda = device.type == "cuda"
    cases = vit_base_cases(batch_2d=256 if cuda else 8, batch_3d=32 if cuda else 2)
    return cases, args.iters or (20 if cuda else 3), 3 if cuda else 1


def run_case(case: dict, mode: str, args, device: torch.device, iters: int, warmup: int) -> dict:
    """Best wall and CPU seconds per step of every variant of ``case`` in ``mode``, interleaved repeats."""
    variants = {
        "kit": ("domainfm", None, "mae"),
        "monai": ("monai", None, "mae"),
        "monai_fused": ("monai", True, "mae"),
        "dino": ("domainfm", None, "dino"),
    }
    if device.type == "cuda":
        variants.pop("monai_fused")  # MONAI is already fused there
    if not args.dino:
        variants.pop("dino")
    bf16 = True if "bf16" in mode else None if device.type == "cuda" else False
    steps = {
        k: build_step(kind, case, device, "compile" in mode, fused, objective, bf16)
        for k, (kind, fused, objective) in variants.items()
    }
    for step in steps.values():
        for _ in range(warmup):
            step()
    mm_flops = 0.0
    if device.type == "cpu" and args.flops:
        steps["matmul"], mm_flops = matmul_step(torch.bfloat16 if "bf16" in mode else torch.float32)
    wall = {k: float("inf") for k in steps}
    cpu = dict(wall)
    for _ in range(args.repeats):  # interleaved: contention from other processes hits every variant alike
        for k, step in steps.items():
            w, c = time_wall_cpu(step, iters, device)
            wall[k], cpu[k] = min(wall[k], w), min(cpu[k], c)
    flops = {}
    if args.flops:
        flops = {k: step_flops(steps[k]) for k in ("kit", "monai", "dino") if k in steps}
    if mm_flops:
        flops["matmul"] = mm_flops
    return {"wall": wall, "cpu": cpu, "flops": flops}


def print_header(args, device: torch.device, iters: int, peak) -> dict:
    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    threads = torch.get_num_threads()
    cpu_peak = cpu_peak_gflops(threads) if device.type == "cpu" else {}
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
        f"{'' if peak is None else f', measured bf16 matmul peak {peak:.0f} TFLOP/s'}, torch {torch.__version__}, "
        f"modes={','.join(args.modes)}, threads={threads}, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset (libgomp spins)')}{load}; wall clock first, CPU seconds "
        f"second; {args.repeats} interleaved repeats of {iters} steps, best of each"
    )
    if cpu_peak:
        print(
            f"CPU peak at the nominal clock: {cpu_peak['fp32']:.0f} GFLOP/s fp32, {cpu_peak['bf16']:.0f} bf16 "
            f"({cpu_peak['note']}); 'mm GFLOP/s' = 1024^3 matmuls of the mode's dtype, timed among the steps (the "
            "practical peak); '%mm' = a step's GFLOP/s over it"
        )
    print(
        "kit = domainfm MAE with its engine's AdamW (fused); MONAI = MaskedAutoEncoderViT with torch's AdamW "
        "defaults (fused on CUDA); MONAI+fused = the same with fused AdamW (isolates the model)"
    )
    print(
        f"{'case':24s} {'mode':12s} {'batch':>5s} {'kit/s':>9s} {'MONAI/s':>9s} {'MONAI+fused/s':>14s} {'ratio':>6s} "
        f"{'vs +fused':>9s} {'kit CPU s':>9s} {'MONAI CPU s':>11s}"
        + ("  mm GFLOP/s  kit GFLOP/s   %mm  %peak  MONAI GFLOP/s" if device.type == "cpu" and args.flops else "")
        + ("  MFU kit  MFU MONAI" if peak else "")
    )
    return cpu_peak


def case_line(case: dict, mode: str, res: dict, cpu_peak: dict, peak) -> str:
    rate = {k: case["batch"] / v for k, v in res["wall"].items()}
    rate.setdefault("monai_fused", rate["monai"])
    cpu = res["cpu"]
    unit = "v" if case["dims"] == 3 else "i"
    line = (
        f"{case['name']:24s} {mode:12s} {case['batch']:5d} {rate['kit']:8.2f}{unit} {rate['monai']:8.2f}{unit} "
        f"{rate['monai_fused']:13.2f}{unit} {rate['kit'] / rate['monai']:6.2f} "
        f"{rate['kit'] / rate['monai_fused']:9.2f} {cpu['kit']:9.3f} {cpu['monai']:11.3f}"
    )
    flops = res["flops"]
    if cpu_peak and flops:
        top = cpu_peak["bf16" if "bf16" in mode else "fp32"]
        mm, kit, monai = (flops[k] / res["wall"][k] / 1e9 for k in ("matmul", "kit", "monai"))
        line += f"  {mm:10.1f} {kit:12.1f} {kit / mm:5.0%} {kit / top:6.1%} {monai:14.1f}"
    if peak and flops:
        mfu = {k: flops[k] / res["wall"][k] / 1e12 / peak for k in ("kit", "monai")}
        line += f"  {mfu['kit']:7.1%}  {mfu['monai']:9.1%}"
    return line


def dino_line(case: dict, mode: str, res: dict, cpu_peak: dict) -> str:
    rate = {k: case["batch"] / v for k, v in res["wall"].items()}
    unit = "v" if case["dims"] == 3 else "i"
    line = (
        f"{case['name']:24s} {mode:12s} {case['batch']:5d} {rate['dino']:8.2f}{unit} {rate['kit']:8.2f}{unit} "
        f"{rate['dino'] / rate['kit']:12.2f} {rate['dino'] / rate['monai']:14.2f} {res['cpu']['dino']:9.3f}"
    )
    if res["flops"].get("dino"):
        g = res["flops"]["dino"] / res["wall"]["dino"] / 1e9
        top = cpu_peak.get("bf16" if "bf16" in mode else "fp32")
        mm = res["flops"]["matmul"] / res["wall"]["matmul"] / 1e9 if "matmul" in res["flops"] else None
        line += f"  {g:12.1f}" + (f" {g / mm:5.0%}" if mm else "") + (f" {g / top:6.1%}" if top else "")
    return line


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases, iters, warmup = cases_for(args, device)
    peak = measure_matmul_peak(device) if device.type == "cuda" else None
    cpu_peak = print_header(args, device, iters, peak)
    out, dino_lines = {}, []
    for case in cases:
        for mode in args.modes:
            res = run_case(case, mode, args, device, iters, warmup)
            print(case_line(case, mode, res, cpu_peak, peak), flush=True)
            if "dino" in res["wall"]:
                dino_lines.append(dino_line(case, mode, res, cpu_peak))
            out[case["name"] if mode == "eager" else f"{case['name']} {mode}"] = {
                k: case["batch"] / v for k, v in res["wall"].items()
            }
    if dino_lines:
        print(
            f"dino step (kit DINO, 2 global crops + {DINO_LOCAL_CROPS} local crops of half the side per image, "
            "EMA teacher update included); no DINO anchor is installed (MONAI has none), so it is set against "
            "the MAE steps of the same run"
        )
        print(
            f"{'case':24s} {'mode':12s} {'batch':>5s} {'dino/s':>9s} {'kit MAE/s':>9s} {'dino/kit MAE':>12s} "
            f"{'dino/MONAI MAE':>14s} {'CPU s':>9s}"
            + ("  dino GFLOP/s   %mm  %peak" if cpu_peak and args.flops else "")
        )
        print("\n".join(dino_lines))
    for mode in (m for m in args.modes if m != "eager" and args.check_steps):
        for objective in ("mae", "dino") if args.dino else ("mae",):
            worst, last = loss_drift(cases[0], mode, objective, args.check_steps)
            print(
                f"numerics: kit {objective} loss, {mode} vs fp32 eager over {args.check_steps} steps "
                f"({cases[0]['name']}, same seed and data): largest relative difference {worst:.2e}, "
                f"last step {last:.2e}"
            )
    return out


if __name__ == "__main__":
    reexec_with_omp_wait(parse_args(sys.argv[1:]).omp_wait, sys.argv[1:])
    main()
