"""The GPU suite: every headline figure of docs/performance.md in one call, written as JSON + markdown.

Sections, each a list of rows (kit and anchor measured in the same run):

* ``peak``: achieved bf16 matmul TFLOP/s (the denominator of MFU).
* ``pretrain``: one optimizer step (forward + backward + AdamW, bf16 autocast, fused AdamW) of every
  objective in :data:`OBJECTIVES` (``mae``, ``dino``) for 2D ViT-B/16 @224 and 3D ViT-B/16 @96^3, kit vs
  MONAI ``MaskedAutoEncoderViT`` (``dino`` has no anchor), eager and ``torch.compile``: samples/s, MFU
  (model FLOPs counted by ``torch.utils.flop_counter`` / measured peak) and peak GPU memory.
* ``loaders``: WSI tiles, medical volumes and GeoTIFF chips against their anchors (the
  ``benchmarks/*.py`` scripts), kit and anchor both at 16 DataLoader workers.
* ``sliding_window``: 3D sliding-window inference (ViT-B/16 + UNETR head, MONAI
  ``sliding_window_inference``) peak GPU memory and time, stitching on the GPU vs on the host.

``--dry`` runs every path on the CPU with tiny shapes (the test suite does, so the suite never rots);
parts that need a GPU (matmul peak, MFU, GPU memory) are recorded as skipped with the reason.

Usage:
    python benchmarks/gpu_suite.py results/gpu            # on an H100/H200, < 8 minutes
    python benchmarks/gpu_suite.py /tmp/suite --dry       # CPU smoke run, < 1 minute
    python benchmarks/gpu_suite.py --quick                # the same into a temp folder (`make bench`)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import archive_scale  # noqa: E402
import medical_loading  # noqa: E402
import pretrain_throughput as pt  # noqa: E402
import rs_sampling  # noqa: E402
import wsi_tiles  # noqa: E402


def _mae_pair(case: dict):
    return pt.ours_mae(case), pt.monai_mae(case)


def _dino_pair(case: dict):
    return pt.ours_dino(case), None  # no DINO anchor is installed (MONAI has none)


#: Pretraining objectives of the suite: name -> builder of ``(kit model, anchor model or None)``.
#: A new objective adds one entry; its kit model must take ``{"image": x}`` (or be a DINO, which
#: :func:`pretrain_throughput.make_step` feeds multi-crop views) and return ``{"loss": ...}``.
OBJECTIVES = {"mae": _mae_pair, "dino": _dino_pair}


def cases(dry: bool) -> list[dict]:
    """ViT-B/16 @224 (2D) and @96^3 (3D), or tiny stand-ins for ``--dry``."""
    if dry:
        return [
            dict(
                name="2D vit-tiny/8 @32 (dry)",
                dims=2,
                in_chans=3,
                img_size=32,
                patch=8,
                dim=48,
                depth=1,
                heads=2,
                dec_dim=48,
                dec_depth=1,
                dec_heads=2,
                batch=2,
            ),
            dict(
                name="3D vit-tiny/8 @16^3 (dry)",
                dims=3,
                in_chans=1,
                img_size=16,
                patch=8,
                dim=48,
                depth=1,
                heads=2,
                dec_dim=48,
                dec_depth=1,
                dec_heads=2,
                batch=2,
            ),
        ]
    return pt.vit_base_cases(batch_2d=256, batch_3d=32)


class Suite:
    """Collects rows per section, times the run and skips sections past the time budget."""

    def __init__(self, out: Path, dry: bool, budget_s: float):
        self.out, self.dry, self.budget_s = out, dry, budget_s
        self.cuda = torch.cuda.is_available() and not dry
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.t0 = time.perf_counter()
        self.sections: dict[str, list[dict]] = {}
        self.peak_tflops: float | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, section: str, **row) -> None:
        self.sections.setdefault(section, []).append(row)
        print(f"[{self.elapsed():6.1f}s] {section}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)

    def run(self, section: str, fn, *args) -> None:
        if self.elapsed() > self.budget_s:
            self.add(section, skipped=f"time budget of {self.budget_s:.0f} s spent before this section")
            return
        try:
            fn(*args)
        except Exception as exc:  # one failing section must not lose the others' figures
            self.add(section, error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            traceback.print_exc()

    def gpu_mem(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None

    def reset_mem(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def section_peak(s: Suite) -> None:
    if not s.cuda:
        s.add("peak", skipped="needs CUDA (the bf16 matmul peak of a GPU)")
        return
    s.peak_tflops = pt.measure_matmul_peak(s.device)
    s.add("peak", dtype="bf16", n=8192, tflops=s.peak_tflops)


def section_pretrain(s: Suite) -> None:
    iters, warmup = (2, 1) if s.dry else (10, 3)
    modes = [False] if not s.cuda else [False, True]
    if not s.cuda:
        s.add("pretrain", skipped="torch.compile rows: GPU only (CPU compile time dwarfs a dry run)")
    flops_of: dict[tuple, float] = {}  # eager FLOP counts, reused for the compiled rows (same model FLOPs)
    for objective, build in OBJECTIVES.items():
        for case in cases(s.dry):
            pt.CASE_PATCH[0] = case["patch"]
            shape = (case["batch"], case["in_chans"], *([case["img_size"]] * case["dims"]))
            for compiled in modes:
                for impl in ("domainfm", "monai"):
                    if s.elapsed() > s.budget_s * 0.7:  # leave time for the loaders and sliding window
                        s.add(
                            "pretrain",
                            objective=objective,
                            case=case["name"],
                            impl=impl,
                            mode="compiled" if compiled else "eager",
                            skipped="time budget",
                        )
                        continue
                    s.reset_mem()
                    torch.manual_seed(0)
                    kit_model, anchor = build(case)
                    model = kit_model if impl == "domainfm" else anchor
                    if model is None:
                        continue
                    model = model.to(s.device)
                    x = torch.randn(shape, device=s.device)
                    row = {
                        "objective": objective,
                        "case": case["name"],
                        "impl": impl,
                        "mode": "compiled" if compiled else "eager",
                        "batch": case["batch"],
                    }
                    try:  # one failing row (e.g. a compile error) must not lose the others
                        step = pt.make_step(impl, model, x, s.device, compiled)
                        dt = pt.time_steps(step, iters, s.device, warmup)
                    except Exception as exc:
                        s.add("pretrain", **row, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                        del model, kit_model, anchor, x
                        continue
                    row["samples_per_s"] = case["batch"] / dt
                    if s.cuda and s.peak_tflops:
                        key = (objective, case["name"], impl)
                        if key not in flops_of:
                            flops_of[key] = pt.step_flops(step)
                        flops = flops_of[key]
                        row["tflops"] = flops / dt / 1e12
                        row["mfu"] = row["tflops"] / s.peak_tflops
                        row["peak_mem_gib"] = s.gpu_mem()
                    s.add("pretrain", **row)
                    del model, kit_model, anchor, step, x


def _quiet(fn, argv):
    """Run a benchmark script's ``main(argv)``; its own printout goes to the log, its dict is returned."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = fn(argv)
    print(buf.getvalue(), end="")
    return res


def section_loaders(s: Suite) -> None:
    w = 0 if s.dry else 16
    if s.dry:
        wsi = [
            "--slides",
            "1",
            "--size",
            "768",
            "--repeats",
            "1",
            "--workers",
            "0",
            "--threads",
            "",
            "--tile-size",
            "128",
        ]
    else:
        wsi = [
            "--slides",
            "8",
            "--size",
            "4096",
            "--repeats",
            "2",
            "--workers",
            "0,16",
            "--threads",
            "",
        ]
    r = _quiet(wsi_tiles.main, wsi)
    at = r["curve"][f"workers={w}"]
    s.add(
        "loaders",
        loader="WSI tiles",
        kit=f"SlideTileDataset, {w} workers",
        kit_per_s=at["kit"],
        anchor=f"OpenSlide.read_region as a Dataset, {w} workers",
        anchor_per_s=at["plain"],
        ratio=at["kit"] / at["plain"],
        plain_loop_per_s=r["plain_tiles_per_s"],
    )
    if s.dry:
        med = [
            "--volumes",
            "2",
            "--shape",
            "24,24,12",
            "--crop",
            "8",
            "--epochs",
            "1",
            "--repeats",
            "1",
            "--workers",
            "0",
        ]
    else:
        med = [
            "--volumes",
            "16",
            "--shape",
            "160,160,80",
            "--crop",
            "96",
            "--epochs",
            "3",
            "--repeats",
            "1",
            "--workers",
            "16",
        ]
    r = _quiet(medical_loading.main, med)
    kit_mem = r["domainfm medical (cache=memory)"]
    anchor = r["MONAI CacheDataset+ThreadDataLoader"]
    s.add(
        "loaders",
        loader="medical volumes",
        kit=f"MedicalDataset cache=memory, {w} workers",
        kit_per_s=kit_mem["volumes_per_s"],
        anchor="MONAI CacheDataset + ThreadDataLoader",
        anchor_per_s=anchor["volumes_per_s"],
        ratio=kit_mem["volumes_per_s"] / anchor["volumes_per_s"],
        kit_cache_mib=kit_mem["cache_bytes"] / 2**20,
        anchor_cache_mib=anchor["cache_bytes"] / 2**20,
    )
    rs = ["--size", "512", "--chips", "10", "--chip", "64", "--repeats", "1"]
    if not s.dry:
        rs = ["--size", "8192", "--chips", "400", "--repeats", "1"]
    r = _quiet(rs_sampling.main, rs + ["--workers", str(w)])
    s.add(
        "loaders",
        loader="GeoTIFF chips",
        kit=f"remote_sensing windows, {w} workers",
        kit_per_s=r["kit_chips_per_s"],
        anchor=f"TorchGeo RasterDataset + RandomGeoSampler, {w} workers",
        anchor_per_s=r["torchgeo_chips_per_s"],
        ratio=r["kit_chips_per_s"] / r["torchgeo_chips_per_s"],
    )


def section_store(s: Suite) -> None:
    """Crops of a prepared store (``domainfm prepare``) against the same crops through MONAI's CacheDataset and
    from the source NIfTI files, on one generated CT archive (the 16 cores of the GPU machine prepare it)."""
    n, shape, crop, n_crops = (6, (24, 24, 16), [16, 16, 8], 40) if s.dry else (200, (96, 96, 64), [64, 64, 32], 2000)
    work = Path(tempfile.mkdtemp(prefix="gpu_suite_store_"))
    src = archive_scale.archive(work / "ct", n, shape)
    archive_scale.WORKERS[:] = [1] if s.dry else [1, 16]
    prepared, store = archive_scale.prepare_rows("medical", src, work, n, "volumes", {"modality": "ct"})
    rates = {name: rate for name, rate, _, _ in archive_scale.loader_rates(src, store, crop, n_crops, work / "pc")}
    kit = max(v for k, v in rates.items() if k.startswith("store, chunk reader"))
    s.add(
        "store",
        loader="prepared store (CT crops)",
        kit=f"domainfm store, {n} volumes",
        kit_per_s=kit,
        anchor="MONAI CacheDataset",
        anchor_per_s=rates["MONAI CacheDataset"],
        ratio=kit / rates["MONAI CacheDataset"],
        source_files_per_s=rates["source NIfTI files"],
        prepare=prepared[-1][-1],
    )


def section_sliding_window(s: Suite) -> None:
    from monai.inferers import sliding_window_inference

    from domainfm.medical.heads import UNETRHead
    from domainfm.models import build_encoder

    if s.dry:
        cfg, roi, vol, sw = dict(embed_dim=48, depth=2, num_heads=2), 16, (24, 24, 20), 2
    else:
        cfg, roi, vol, sw = dict(embed_dim=768, depth=12, num_heads=12), 96, (320, 320, 256), 4
    enc = build_encoder(
        "vit-base", patch_embed="3d", in_chans=1, img_size=roi, patch_size=16 if not s.dry else 8, **cfg
    )
    head = UNETRHead(
        enc.embed_dim,
        2,
        spatial_dims=3,
        patch_size=enc.config["patch_size"],
        in_chans=1,
        depth=enc.depth,
        feature_size=16 if not s.dry else 4,
    )
    enc, head = enc.to(s.device).eval(), head.to(s.device).eval()

    def predictor(x):
        return head(enc.forward_features(x, layers=head.layers))

    image = torch.rand(1, 1, *vol)
    for where in ("device", "host"):
        s.reset_mem()
        t = time.perf_counter()
        with torch.no_grad(), torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.cuda):
            out = sliding_window_inference(
                image.to(s.device) if where == "device" else image,
                roi_size=[roi] * 3,
                sw_batch_size=sw,
                predictor=predictor,
                overlap=0.25,
                mode="gaussian",
                sw_device=s.device,
                device=s.device if where == "device" else "cpu",
            )
        if s.cuda:
            torch.cuda.synchronize()
        row = {
            "volume": "x".join(map(str, vol)),
            "roi": roi,
            "sw_batch": sw,
            "stitch_on": where,
            "seconds": time.perf_counter() - t,
            "out_shape": "x".join(map(str, out.shape[2:])),
        }
        row["peak_mem_gib"] = s.gpu_mem() if s.cuda else "n/a (CPU)"
        s.add("sliding_window", **row)


SECTIONS = [
    ("peak", section_peak),
    ("pretrain", section_pretrain),
    ("loaders", section_loaders),
    ("store", section_store),
    ("sliding_window", section_sliding_window),
]


def markdown(meta: dict, sections: dict[str, list[dict]]) -> str:
    """One markdown table per section (columns: the union of the rows' keys, in order)."""
    dry = ", DRY RUN" if meta["dry"] else ""
    lines = [f"# GPU suite ({meta['date']}, {meta['device']}, torch {meta['torch']}{dry})", ""]
    for name, rows in sections.items():
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        lines += [f"## {name}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            cells = []
            for c in cols:
                v = r.get(c, "")
                cells.append(f"{v:.1%}" if c == "mfu" and isinstance(v, float) else _fmt(v))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", help="folder for gpu_suite.json and gpu_suite.md (default: a temp folder)")
    ap.add_argument("--dry", action="store_true", help="CPU, tiny shapes; GPU-only parts skipped with the reason")
    ap.add_argument("--quick", action="store_true", help="same as --dry (for `make bench`)")
    ap.add_argument(
        "--budget-s", type=float, default=450.0, help="sections starting after this many seconds are skipped"
    )
    ap.add_argument("--only", default="", help="comma-separated sections to run (default all)")
    args = ap.parse_args(argv)
    args.dry = args.dry or args.quick
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_suite_"))
    out.mkdir(parents=True, exist_ok=True)
    s = Suite(out, args.dry, args.budget_s)
    if not s.dry and not s.cuda:
        print("no CUDA device: running the dry (CPU) variant instead; pass --dry to silence this", file=sys.stderr)
        s.dry = True
    if s.dry:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    only = {x for x in args.only.split(",") if x}
    for name, fn in SECTIONS:
        if not only or name in only:
            s.run(name, fn, s)
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "dry": s.dry,
        "device": torch.cuda.get_device_name() if s.cuda else f"CPU ({os.cpu_count()} cores, {platform.machine()})",
        "torch": torch.__version__,
        "seconds": round(s.elapsed(), 1),
        "objectives": list(OBJECTIVES),
        "python": platform.python_version(),
    }
    result = {"meta": meta, "sections": s.sections}
    (out / "gpu_suite.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "gpu_suite.md").write_text(markdown(meta, s.sections) + f"\nTotal {meta['seconds']} s.\n")
    print(f"wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'} in {meta['seconds']} s")
    return result


if __name__ == "__main__":
    main()
