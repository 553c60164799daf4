"""MAE, contrastive and combined objectives: they run in 2D/3D/wavelength and MAE learns."""

import math

import torch

from domainfm.data.sample import collate_samples
from domainfm.models import build_encoder
from domainfm.ssl import MAE, Contrastive, MAEContrastive, collapse_metrics
from domainfm.ssl.mae import random_masking
from domainfm.synthetic import ShapesDataset


def _tiny(**kw):
    base = dict(in_chans=1, img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)
    base.update(kw)
    return build_encoder("vit-tiny", **base)


def test_random_masking_ratio_and_restore():
    keep, mask, restore = random_masking(3, 16, 0.75, "cpu")
    assert keep.shape == (3, 4) and mask.sum(1).tolist() == [12.0] * 3
    # the kept tokens are exactly the unmasked ones
    for b in range(3):
        assert set(keep[b].tolist()) == set((mask[b] == 0).nonzero().flatten().tolist())


def test_mae_loss_falls_on_structured_data():
    torch.manual_seed(0)
    ds = ShapesDataset(64, size=32, seed=1, noise=0.05)
    batch = collate_samples([ds[i] for i in range(64)])
    mae = MAE(_tiny(), mask_ratio=0.75, decoder_dim=32, decoder_depth=1, decoder_heads=2, norm_pix_loss=False)
    opt = torch.optim.AdamW(mae.parameters(), lr=2e-3)
    losses = []
    for step in range(40):
        torch.manual_seed(step)
        loss = mae({"image": batch["image"]})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)


def test_mae_in_3d_and_wavelength_modes():
    enc3 = _tiny(patch_embed="3d", img_size=16, patch_size=(4, 8, 8))
    out = MAE(enc3, decoder_dim=32, decoder_depth=1, decoder_heads=2)({"image": torch.randn(2, 1, 16, 16, 16)})
    assert out["pred"].shape == (2, 16, 4 * 8 * 8) and math.isfinite(float(out["loss"]))
    encw = _tiny(patch_embed="wavelength", in_chans=None)
    mae = MAE(encw, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    for wl in ([0.49, 0.56, 0.665], [0.842, 1.61]):
        out = mae({"image": torch.randn(2, len(wl), 32, 32), "wavelengths": wl})
        assert out["pred"].shape == (2, 16, len(wl) * 64)
        out["loss"].backward()
    assert mae.pixel_head.weight_gen.out.weight.grad is not None


def test_mae_reconstruction_pastes_visible_patches():
    torch.manual_seed(0)
    mae = MAE(_tiny(), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    x = torch.randn(2, 1, 32, 32)
    masked, recon, original = mae.reconstruct({"image": x})
    assert recon.shape == x.shape and torch.equal(original, x)
    visible = masked != 0
    assert torch.allclose(recon[visible], x[visible])


def test_contrastive_and_momentum_update():
    torch.manual_seed(0)
    moco = Contrastive(_tiny(), proj_dim=16, hidden_dim=32, momentum=0.9)
    views = [torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32)]
    out = moco({"views": views})
    out["loss"].backward()
    before = next(moco.momentum_encoder.parameters()).clone()
    with torch.no_grad():
        for p in moco.encoder.parameters():
            p.add_(1.0)
    moco.on_step_end(1, 10)
    after = next(moco.momentum_encoder.parameters())
    assert not torch.allclose(before, after)
    assert all(not p.requires_grad for p in moco.momentum_encoder.parameters())


def test_combined_objective_weights():
    torch.manual_seed(0)
    obj = MAEContrastive(
        _tiny(),
        mae_weight=1.0,
        contrastive_weight=0.5,
        mae_kwargs={"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
        contrastive_kwargs={"proj_dim": 16, "hidden_dim": 32},
    )
    views = [torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32)]
    out = obj({"image": views[0], "views": views})
    assert torch.isclose(out["loss"], out["mae_loss"] + 0.5 * out["contrastive_loss"], atol=1e-5)


def test_collapse_monitor_detects_collapse():
    healthy = collapse_metrics(torch.randn(128, 32))
    collapsed = collapse_metrics(torch.ones(128, 32) + 1e-4 * torch.randn(128, 32))
    assert healthy["effective_rank"] > 20 and collapsed["embed_std"] < 0.01
    assert healthy["embed_std"] > 10 * collapsed["embed_std"]
