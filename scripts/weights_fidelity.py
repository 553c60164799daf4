"""Measured conversion fidelity: domainfm patch tokens vs timm's for RGB, wavelength, grey and 3D imports.

Random timm weights (depth 4), fp32; prints the max absolute token difference per mapping.

Usage:
    .venv/bin/python scripts/weights_fidelity.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

import domainfm

RGB_UM = [0.665, 0.56, 0.49]


def _tokens(vit, x):
    return vit.forward_features(x)[:, vit.num_prefix_tokens :]


def measure(name: str, img_size: int, tmp: Path) -> dict[str, float]:
    torch.manual_seed(0)
    vit = timm.create_model(name, pretrained=False, img_size=img_size, depth=4).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0, 0.05)
    src = tmp / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(src))

    def imported(tag, **kw):
        return domainfm.load(domainfm.import_weights(src, domain="synthetic", out=tmp / f"{name}-{tag}", **kw))

    x = torch.randn(4, 3, img_size, img_size)
    grey = x[:, :1]
    out = {}
    with torch.no_grad():
        ref = _tokens(vit, x)
        ref_grey = _tokens(vit, grey.expand(-1, 3, -1, -1))
        out["rgb"] = (imported("rgb", channels=3).features(x)["tokens"] - ref).abs().max().item()
        wl = imported("wl", channels=3, wavelengths=RGB_UM)
        out["wavelength"] = (wl.features(x, wavelengths=RGB_UM)["tokens"] - ref).abs().max().item()
        out["grey"] = (imported("grey").features(grey)["tokens"] - ref_grey).abs().max().item()
        vol = grey[:, :, None].expand(-1, -1, 16, -1, -1).contiguous()
        t3 = imported("3d", spatial_dims=3, patch_depth=4).features(vol)["tokens"]
        out["3d"] = (t3.reshape(4, 4, -1, ref.shape[-1]) - ref_grey[:, None]).abs().max().item()
        out["max |token|"] = ref.abs().max().item()
    return out


def main() -> int:
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    for name, size in (("vit_small_patch16_224", 64), ("vit_small_patch14_reg4_dinov2", 56)):
        for key, value in measure(name, size, tmp).items():
            print(f"{name} {key}: {value:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
