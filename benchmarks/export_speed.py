"""Export for deployment: export time, file size, and inference time of the exported file vs the kit.

Two fine-tuned checkpoints in the same run, a 2D classifier (the synthetic shapes domain) and a 3D segmenter
(the medical domain's UNETR head on phantom CTs), are exported to ONNX and ``.pt2`` (``domainfm.export``). The
same batch of pixels then goes through the kit (the loaded checkpoint, eager PyTorch, preprocessing excluded:
the batch is model-ready for it and raw pixels for the exported files, whose graph normalises), through
onnxruntime (CPU provider) and through the loaded ``torch.export`` program. Wall and CPU seconds of the best
of ``--repeats`` runs; torch and onnxruntime use the same thread count (``--threads``, default torch's).

Usage:
    .venv/bin/python benchmarks/export_speed.py            # ViT depth 4, width 192; 64 px 2D, 32^3 3D
    .venv/bin/python benchmarks/export_speed.py --quick    # tiny models on one thread (what `make bench` runs)
    .venv/bin/python benchmarks/export_speed.py --depth 12 --dim 384 --size-2d 224 --size-3d 96 --threads 8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import domainfm  # noqa: E402
from domainfm.exported import load_exported  # noqa: E402
from domainfm.medical.synthetic import write_nifti_pair  # noqa: E402

QUIET_TRAIN = {"steps": 2, "batch_size": 2, "progress": False, "tensorboard": False, "warmup_steps": 1}


def _model(args, patch: int) -> dict:
    return {"patch_size": patch, "depth": args.depth, "embed_dim": args.dim, "num_heads": max(1, args.dim // 64)}


def classifier_2d(folder: Path, args) -> Path:
    cfg = {
        "domain": "synthetic",
        "out": str(folder / "pre2d"),
        "data": {"img_size": args.size_2d, "options": {"num_samples": 16}},
        "model": _model(args, 8),
        "train": dict(QUIET_TRAIN),
    }
    pre = domainfm.pretrain(cfg)
    return domainfm.finetune(pre, task="classification", out=folder / "cls2d", overrides=["train.steps=2"])


def segmenter_3d(folder: Path, args) -> Path:
    for i in range(2):
        write_nifti_pair(folder / "ct", f"c{i}", shape=(args.size_3d,) * 3, seed=i)
    cfg = {
        "domain": "medical",
        "out": str(folder / "pre3d"),
        "data": {"path": str(folder / "ct"), "img_size": args.size_3d, "options": {"modality": "ct"}},
        "model": _model(args, 8 if args.size_3d < 64 else 16),
        "train": dict(QUIET_TRAIN),
    }
    pre = domainfm.pretrain(cfg)
    opts = ["train.steps=2", "finetune.head_options={feature_size: 8}"]
    return domainfm.finetune(pre, task="segmentation", out=folder / "seg3d", overrides=opts)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Best wall and CPU seconds of ``repeats`` calls (after one warm-up call)."""
    fn()
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - w0, time.process_time() - c0))
    return best


def bench_one(name: str, ckpt: Path, folder: Path, batch: int, args) -> dict:
    model = domainfm.load(ckpt)
    rows: dict[str, tuple[float, float]] = {}
    files = {}
    for fmt in ("onnx", "pt2"):
        t0 = time.perf_counter()
        files[fmt] = domainfm.export(ckpt, folder / f"{name}.{fmt}", exist_ok=True)
        rows[f"export {fmt}"] = (time.perf_counter() - t0, files[fmt].stat().st_size / 2**20)
    onnx_model = load_exported(files["onnx"], threads=args.threads)
    pt2_model = load_exported(files["pt2"])
    exp = onnx_model.export
    size = exp["input"]["size"]
    pixels = torch.rand(batch, len(exp["input"]["channels"]), *size) * 1000 - 500  # HU-like for the CT model
    x = _model_ready(exp, pixels)
    with torch.no_grad():
        rows["kit (eager PyTorch)"] = timed(lambda: model.logits(x), args.repeats)
        rows["onnxruntime (CPU)"] = timed(lambda: onnx_model.run(pixels), args.repeats)
        rows["torch.export program"] = timed(lambda: pt2_model.run(pixels), args.repeats)
    return {"rows": rows, "shape": f"{batch} x {len(exp['input']['channels'])} x {' x '.join(map(str, size))}"}


def _model_ready(exp: dict, pixels: torch.Tensor) -> torch.Tensor:
    """The batch the checkpoint takes for ``pixels``: the export's in-graph normalisation, done here."""
    norm = exp["normalization"]
    if not norm.get("inside"):
        return pixels
    shape = (1, -1) + (1,) * (pixels.ndim - 2)
    x = (pixels - torch.tensor(norm["mean"]).reshape(shape)) / torch.tensor(norm["std"]).reshape(shape)
    return x.clamp(*norm["clip"]) if norm.get("clip") else x


def report(name: str, res: dict) -> None:
    rows = res["rows"]
    print(f"{name} (input {res['shape']}):")
    print(f"  {'':24s} {'wall s':>9s} {'CPU s':>9s} {'kit/this':>9s}")
    for label in ("export onnx", "export pt2"):
        wall, mb = rows[label]
        print(f"  {label:24s} {wall:9.2f} {'':>9s} {'':>9s}  file {mb:.2f} MB")
    kit = rows["kit (eager PyTorch)"][0]
    for label in ("kit (eager PyTorch)", "onnxruntime (CPU)", "torch.export program"):
        wall, cpu = rows[label]
        print(f"  {label:24s} {wall:9.4f} {cpu:9.4f} {kit / wall:8.2f}x")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--size-2d", type=int, default=64)
    ap.add_argument("--size-3d", type=int, default=32)
    ap.add_argument("--batch-2d", type=int, default=16)
    ap.add_argument("--batch-3d", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs after a warm-up; the best is reported")
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default torch's)")
    ap.add_argument("--quick", action="store_true", help="tiny models for a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.depth, args.dim, args.size_2d, args.size_3d, args.batch_2d, args.batch_3d, args.repeats = (
            1, 32, 32, 16, 8, 1, 2,
        )  # fmt: skip
    # a smoke run on one thread: tiny ops on several OpenMP threads of a busy machine time the contention
    args.threads = args.threads or (1 if args.quick else torch.get_num_threads())
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    folder = Path(tempfile.mkdtemp(prefix="exportbench_"))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ckpts = {"2D classifier": classifier_2d(folder, args), "3D segmenter": segmenter_3d(folder, args)}
        print(
            f"ViT depth {args.depth}, width {args.dim}; 2D {args.size_2d} px batch {args.batch_2d}, 3D "
            f"{args.size_3d}^3 batch {args.batch_3d}; {args.threads} thread(s) for torch and onnxruntime; "
            f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}; best of {args.repeats}"
        )
        out = {}
        for name, ckpt in ckpts.items():
            batch = args.batch_2d if name.startswith("2D") else args.batch_3d
            out[name] = bench_one(name.replace(" ", "_"), ckpt, folder, batch, args)
            report(name, out[name])
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
