"""What computing only the masked patches buys the kit's MAE step: the current MAE vs the same model run the
full way (every patch embedded by the conv, every token through every decoder block and the pixel head, loss
masked afterwards), interleaved in one run at the ``pretrain_throughput.py --quick`` shapes.

    python benchmarks/mae_masked_only.py                 # wall clock at torch's threads, CPU seconds second
    python benchmarks/mae_masked_only.py --threads 1 --clock cpu   # ranked by CPU seconds, one torch thread
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pretrain_throughput as pt  # noqa: E402

from domainfm.models.patch_embed import gather_tokens  # noqa: E402
from domainfm.ssl.mae import MAE, random_masking  # noqa: E402


class FullMAE(MAE):
    """The same modules computed the full way (the kit's forward before it skipped what the loss ignores)."""

    def forward(self, batch: dict, image=None) -> dict:
        x = batch["image"]
        enc = self.encoder
        grid = enc.grid_size(x.shape)
        n = len(enc.pos_embed[0])
        ids_keep, mask, ids_restore = random_masking(x.shape[0], n, self.mask_ratio, x.device)
        tokens, _ = enc.tokenize(x)
        tokens = gather_tokens(tokens, ids_keep)
        for blk in enc.blocks:
            tokens = blk(tokens)
        d = self.decoder_embed(enc.norm(tokens))
        d = torch.cat([d, self.mask_token.expand(d.shape[0], n - d.shape[1], -1)], dim=1)
        d = gather_tokens(d, ids_restore) + self.decoder_pos(grid, d.device)
        for blk in self.decoder_blocks:
            d = blk(d)
        pred = self.pixel_head(self.decoder_norm(d), channels=x.shape[1])
        per_patch = ((pred - self.targets(x)) ** 2).mean(-1)
        return {"loss": (per_patch * mask).sum() / mask.sum()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="the clock that ranks the repeats")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--omp-wait", choices=tuple(pt.OMP_WAIT), default="passive", help="OpenMP wait policy")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 repeats of 2 steps (for `make bench`)")
    args = ap.parse_args(argv)
    if argv is None:
        pt.reexec_with_omp_wait(args.omp_wait, sys.argv[1:], __file__)
    if args.quick:
        args.repeats, args.iters = 2, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    cases = {
        "2D vit-s/8 @64": dict(dims=2, in_chans=3, img_size=64, patch=8, dec_dim=256, dec_heads=8, batch=16),
        "3D vit-s/8 @32^3": dict(dims=3, in_chans=1, img_size=32, patch=8, dec_dim=192, dec_heads=6, batch=4),
    }
    print(
        f"load average {os.getloadavg()[0]:.2f}; {torch.get_num_threads()} torch thread(s), OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; wall clock first, CPU seconds per step second; best of "
        f"{args.repeats} by the {args.clock} clock"
    )
    out = {}
    for name, case in cases.items():
        case = dict(case, dim=384, depth=6, heads=6, dec_depth=2)
        steps = {}
        for kind in ("full", "masked only"):
            torch.manual_seed(0)
            model = pt.ours_mae(case)
            if kind == "full":
                model.__class__ = FullMAE
            x = torch.randn((case["batch"], case["in_chans"], *([case["img_size"]] * case["dims"])))
            steps[kind] = pt.make_step("domainfm", model, x, device, False)
            for _ in range(2):  # warm-up
                steps[kind]()
        best = {k: (float("inf"), float("inf")) for k in steps}
        rank = 1 if args.clock == "cpu" else 0
        for _ in range(args.repeats):
            for k, step in steps.items():
                wc = pt.time_wall_cpu(step, args.iters, device)
                best[k] = min(best[k], wc, key=lambda t: t[rank])
        rate = {k: case["batch"] / v[0] for k, v in best.items()}
        print(
            f"{name:18s} full {rate['full']:7.2f}/s  masked only {rate['masked only']:7.2f}/s  "
            f"speedup {rate['masked only'] / rate['full']:.3f}x  (CPU s/step: full {best['full'][1]:.3f}, "
            f"masked only {best['masked only'][1]:.3f})"
        )
        out[name] = rate
    print(f"load average {os.getloadavg()[0]:.2f}")
    return out


if __name__ == "__main__":
    main()
