"""MAE pretraining throughput: domainfm vs MONAI's MaskedAutoEncoderViT, same shapes, same run.

Measures optimizer steps (forward + backward + AdamW) on random data and prints images/s (volumes/s
in 3D) for both, their ratio, and on CUDA the model FLOP utilisation (MFU) against the bf16 matmul
peak measured on this GPU in the same run.

    python benchmarks/pretrain_throughput.py            # vit-base/16 @ 224 (2D) and 96^3 (3D)
    python benchmarks/pretrain_throughput.py --quick    # small shapes, runs on a laptop CPU in ~1 min
    python benchmarks/pretrain_throughput.py --compile  # add torch.compile
    python benchmarks/pretrain_throughput.py --quick --threads 1   # steadier on a shared, busy CPU
    python benchmarks/pretrain_throughput.py --quick --threads 1 --clock cpu   # CPU seconds: steadier still

The kit's ``dino`` objective is timed in the same run (``--no-dino`` skips it) and set against the MAE steps.
"""

from __future__ import annotations

import argparse
import os
import time

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
):
    torch.manual_seed(0)
    builder = monai_mae if kind == "monai" else ours_dino if objective == "dino" else ours_mae
    model = builder(case).to(device)
    x = torch.randn((case["batch"], case["in_chans"], *([case["img_size"]] * case["dims"])), device=device)
    CASE_PATCH[0] = case["patch"]
    return make_step(kind, model, x, device, compile_, fused, bf16)


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


def time_steps(step, iters: int, device: torch.device, warmup: int = 0, clock: str = "wall") -> float:
    """Seconds per call of ``step`` over ``iters`` calls, after ``warmup`` untimed ones.

    ``clock="cpu"`` counts this process's CPU seconds (``time.process_time``) instead of wall time: with one
    torch thread on a shared, oversubscribed CPU it leaves out the time other processes held the core.
    """
    now = time.process_time if clock == "cpu" and device.type == "cpu" else time.perf_counter
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = now()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (now() - t) / iters


def bench(kind: str, case: dict, device: torch.device, batch: int, iters: int, warmup: int, compile_: bool):
    """``(samples/s, FLOP/s)`` of one implementation (FLOPs counted on CUDA only)."""
    step = build_step(kind, dict(case, batch=batch), device, compile_)
    dt = time_steps(step, iters, device, warmup)
    flops = step_flops(step) if device.type == "cuda" else float("nan")
    return batch / dt, flops / dt


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (CPU-friendly)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every variant; best of each")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-dino", dest="dino", action="store_false", help="skip the dino objective's step")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for every variant on CPU too")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: time CPU seconds of this process (steadier on a busy machine; meant for --threads 1)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.quick:
        cases = [
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
        iters, warmup = args.iters or 5, 2
    else:
        cuda = device.type == "cuda"
        cases = vit_base_cases(batch_2d=256 if cuda else 8, batch_3d=32 if cuda else 2)
        iters, warmup = args.iters or (20 if device.type == "cuda" else 3), 3 if device.type == "cuda" else 1
    peak = measure_matmul_peak(device) if device.type == "cuda" else None
    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
        f"{'' if peak is None else f', measured bf16 matmul peak {peak:.0f} TFLOP/s'}, torch {torch.__version__}, "
        f"compile={args.compile}, bf16 autocast={'all' if args.bf16 else device.type == 'cuda'}, "
        f"threads={torch.get_num_threads()}{load}; {args.clock} clock; {args.repeats} interleaved repeats of "
        f"{iters} steps, best of each"
    )
    print(
        "kit = domainfm MAE with its engine's AdamW (fused); MONAI = MaskedAutoEncoderViT with torch's AdamW "
        "defaults (fused on CUDA); MONAI+fused = the same with fused AdamW (isolates the model)"
    )
    print(
        f"{'case':24s} {'batch':>5s} {'kit/s':>9s} {'MONAI/s':>9s} {'MONAI+fused/s':>14s} {'ratio':>6s} "
        f"{'ratio vs +fused':>15s}" + ("  MFU kit  MFU MONAI" if peak else "")
    )
    out, dino_lines = {}, []
    for case in cases:
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
        steps = {
            k: build_step(kind, case, device, args.compile, fused, objective, True if args.bf16 else None)
            for k, (kind, fused, objective) in variants.items()
        }
        for step in steps.values():
            for _ in range(warmup):
                step()
        best = {k: float("inf") for k in steps}
        for _ in range(args.repeats):  # interleaved: contention from other processes hits every variant alike
            for k, step in steps.items():
                best[k] = min(best[k], time_steps(step, iters, device, clock=args.clock))
        rate = {k: case["batch"] / v for k, v in best.items()}
        rate.setdefault("monai_fused", rate["monai"])
        unit = "v" if case["dims"] == 3 else "i"
        line = (
            f"{case['name']:24s} {case['batch']:5d} {rate['kit']:8.2f}{unit} {rate['monai']:8.2f}{unit} "
            f"{rate['monai_fused']:13.2f}{unit} {rate['kit'] / rate['monai']:6.2f} "
            f"{rate['kit'] / rate['monai_fused']:15.2f}"
        )
        if peak:
            mfu = {k: step_flops(steps[k]) / best[k] / 1e12 / peak for k in ("kit", "monai")}
            line += f"  {mfu['kit']:7.1%}  {mfu['monai']:9.1%}"
        print(line)
        if "dino" in rate:
            dino_lines.append(
                f"{case['name']:24s} {case['batch']:5d} {rate['dino']:8.2f}{unit} {rate['kit']:8.2f}{unit} "
                f"{rate['dino'] / rate['kit']:12.2f} {rate['dino'] / rate['monai']:14.2f}"
            )
        out[case["name"]] = rate
        del steps
    if dino_lines:
        print(
            f"dino step (kit DINO, 2 global crops + {DINO_LOCAL_CROPS} local crops of half the side per image, "
            "EMA teacher update included); no DINO anchor is installed (MONAI has none), so it is set against "
            "the MAE steps of the same run"
        )
        print(
            f"{'case':24s} {'batch':>5s} {'dino/s':>9s} {'kit MAE/s':>9s} {'dino/kit MAE':>12s} {'dino/MONAI MAE':>14s}"
        )
        print("\n".join(dino_lines))
    return out


if __name__ == "__main__":
    main()
