"""Self-distillation (dino, mae+dino): learning on shapes, 2D/3D/wavelength, exact resume, DDP, collapse, bad input."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import domainfm
from domainfm.data.multicrop import MultiCropDataset, make_multicrop
from domainfm.errors import ConfigError
from domainfm.models import build_encoder
from domainfm.registry import get_domain
from domainfm.runconfig import load_config
from domainfm.ssl import DINO, CollapseError, build_objective, pretrain_views
from domainfm.train.checkpoint import list_checkpoints
from tests.conftest import tiny_config
from tests.helpers import TINY_MODEL_FLAGS, free_port

DINO_SMALL = {
    "name": "dino",
    "prototypes": 64,
    "head_hidden_dim": 64,
    "head_bottleneck_dim": 16,
    "local_crops": 2,
    "teacher_momentum": 0.9,
}


def _weights(ckpt):
    return load_file(str(Path(ckpt) / "model.safetensors"))


def test_dino_loss_is_finite_and_falls_on_shapes():
    torch.manual_seed(0)
    cfg = load_config(tiny_config("unused", objective=DINO_SMALL), check_paths=False)
    domain = get_domain("synthetic")
    data = domain.dataset(cfg, "pretrain")
    views = pretrain_views(data, domain, cfg)
    batch = [views[i] for i in range(16)]
    crops = [torch.stack([s["views"][j] for s in batch]) for j in range(4)]
    enc = build_encoder("vit-tiny", in_chans=1, img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    dino = DINO(
        enc,
        prototypes=64,
        hidden_dim=64,
        bottleneck_dim=16,
        head_bn=True,
        teacher_momentum=0.9,
        ibot_weight=1.0,
        koleo_weight=0.1,
        collapse_check_after=10_000,
    )
    opt = torch.optim.AdamW([p for p in dino.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for step in range(1, 26):
        out = dino({"views": crops})
        assert torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        dino.on_step_end(step, 25)
        losses.append(float(out["dino_loss"]))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses
    assert float(out["teacher_mi"]) > 0.1  # the teacher's assignment depends on the image
    assert {"teacher_entropy", "teacher_kl_uniform", "teacher_mi", "ibot_loss", "koleo_loss"} <= set(out)


@pytest.mark.parametrize(
    "options,objective",
    [
        ({"spatial_dims": 3, "num_samples": 16}, {"name": "dino", "ibot_weight": 1.0}),
        (
            {"channels": 3, "wavelengths": [0.49, 0.56, 0.665], "num_samples": 16},
            {"name": "dino", "centering": "sinkhorn"},
        ),
        ({"num_samples": 16}, {"name": "mae+dino", "koleo_weight": 0.1}),
        (
            {"num_samples": 16, "amp": "bf16"},
            {"name": "dino", "ibot_weight": 1.0, "koleo_weight": 0.1, "head_bn": True},
        ),
    ],
)
def test_dino_runs_on_3d_wavelength_and_with_mae(tmp_path, options, objective):
    amp = options.pop("amp", "fp32")  # bf16 autocast runs on CPU too: the losses stay finite
    size = 16 if options.get("spatial_dims") == 3 else 32
    cfg = tiny_config(
        tmp_path / "run",
        data={"img_size": size, "options": options},
        model={"depth": 1, "embed_dim": 32, "patch_size": 4 if size == 16 else 8, "class_token": True},
        objective={**DINO_SMALL, **objective},
        train={"steps": 2, "batch_size": 4, "amp": amp},
    )
    ckpt = domainfm.pretrain(cfg)
    weights = _weights(ckpt)
    assert any(k.endswith("teacher_encoder.cls_token") for k in weights)
    assert all(torch.isfinite(t.float()).all() for t in weights.values())
    rows = (tmp_path / "run" / "metrics.csv").read_text()
    assert "teacher_entropy" in rows and "teacher_kl_uniform" in rows and "effective_rank" in rows


def test_resume_is_exact_for_teacher_and_centers(tmp_path):
    class Crash(Exception):
        pass

    def crash_at_4(step, encoder):
        if step == 4:
            raise Crash("simulated crash after step 4")
        return {}

    obj = {**DINO_SMALL, "ibot_weight": 1.0, "koleo_weight": 0.1, "teacher_temp_warmup_steps": 4}
    train = {"steps": 6, "ckpt_every": 3, "batch_size": 8}
    full = domainfm.pretrain(tiny_config(tmp_path / "full", train=train, objective=obj))
    cfg = tiny_config(tmp_path / "crashed", train=train, objective=obj)
    with pytest.raises(Crash):
        domainfm.pretrain(cfg, callbacks=[crash_at_4])
    resumed = domainfm.pretrain(cfg, resume=True)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys() and {"center", "patch_center", "step", "teacher_head.prototypes"} <= set(a)
    assert int(a["step"]) == 6 and float(a["center"].abs().sum()) > 0
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def test_two_process_gloo_ddp_dino(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "domainfm.cli",
        "pretrain",
        "--domain",
        "synthetic",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--num-samples",
        "16",
        *TINY_MODEL_FLAGS,
        "--set",
        "train.tensorboard=false",
        "--set",
        "objective.name=dino",
        "--set",
        "objective.prototypes=32",
        "--set",
        "objective.head_hidden_dim=32",
        "--set",
        "objective.head_bottleneck_dim=16",
        "--set",
        "objective.local_crops=1",
        "--set",
        "objective.ibot_weight=1.0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = _weights(list_checkpoints(out)[-1])
    assert int(weights["step"]) == 2 and all(torch.isfinite(t.float()).all() for t in weights.values())


def test_collapse_on_constant_output_stops_with_a_clear_message(tmp_path):
    enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    dino = DINO(enc, prototypes=32, hidden_dim=32, bottleneck_dim=16, collapse_check_after=0, collapse_patience=2)
    views = [torch.zeros(8, 1, 16, 16)] * 2  # every sample the same: the teacher's assignment carries nothing
    dino({"views": views})
    dino.on_step_end(1, 10)
    dino({"views": views})
    with pytest.raises(CollapseError, match="collapsed.*stop_on_collapse=false"):
        dino.on_step_end(2, 10)
    keep_going = DINO(
        enc,
        prototypes=32,
        hidden_dim=32,
        bottleneck_dim=16,
        collapse_check_after=0,
        collapse_patience=2,
        stop_on_collapse=False,
    )
    for step in range(1, 4):
        out = keep_going({"views": views})
        keep_going.on_step_end(step, 10)
    assert float(out["teacher_mi"]) < 1e-3 and int(keep_going.collapsed_steps) == 3
    healthy = DINO(
        enc,
        prototypes=32,
        hidden_dim=32,
        bottleneck_dim=16,
        collapse_check_after=0,
        collapse_patience=1,
        teacher_temp=0.01,
    )
    healthy({"views": [torch.randn(8, 1, 16, 16) * 3] * 2})
    healthy.on_step_end(1, 10)
    assert int(healthy.collapsed_steps) == 0


@pytest.mark.parametrize(
    "objective,train,key",
    [
        ({"local_crop_size": 64}, {}, "objective.local_crop_size"),
        ({"global_crop_scale": [0.5, 1.5]}, {}, "objective.global_crop_scale"),
        ({}, {"batch_size": 1}, "train.batch_size"),
        ({"global_crops": 0}, {}, "objective.global_crops"),
        ({"prototypes": 1}, {}, "objective.prototypes"),
        ({"centering": "mean"}, {}, "objective.centering"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_key(tmp_path, objective, train, key):
    cfg = tiny_config(tmp_path / "bad", objective={**DINO_SMALL, **objective}, train=train)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as exc:
        domainfm.pretrain(cfg)
    assert "\n" not in str(exc.value)


def test_multicrop_is_reproducible_per_item_and_keeps_channels():
    crops = make_multicrop(2, (16, 16), (8, 8), n_local=2)
    ds = MultiCropDataset([{"image": torch.rand(4, 16, 16), "meta": {}}], crops, seed=3)
    a, b = ds[0]["views"], ds[0]["views"]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and [v.shape[0] for v in a] == [4] * 4
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["views"][0], a[0])
    with pytest.raises(ConfigError, match="objective.local_crop_size"):
        make_multicrop(2, (16, 16), (32, 32))(torch.rand(1, 16, 16), torch.Generator())


def test_objective_registry_builds_dino():
    from domainfm.config import ObjectiveConfig

    enc = build_encoder("vit-tiny", in_chans=1, img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    assert type(build_objective(enc, ObjectiveConfig(name="mae+dino", prototypes=8))).__name__ == "MAEDINO"


@pytest.mark.parametrize(
    "name", ["medical/xray_mae_paper.yaml", "pathology/tiles_dino_pathdino.yaml", "medical/ct_dino_3d.yaml"]
)
def test_literature_presets_validate(name):
    from domainfm.data.multicrop import check_multicrop

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / name, check_paths=False)
    dims = len(cfg.data.img_size) if isinstance(cfg.data.img_size, list) else 2
    img = cfg.data.img_size if isinstance(cfg.data.img_size, list) else [cfg.data.img_size] * dims
    patch = cfg.model.patch_size if isinstance(cfg.model.patch_size, list) else [cfg.model.patch_size] * dims
    if "dino" in cfg.objective.name:
        local = check_multicrop(cfg.objective, img, patch, cfg.train.batch_size)
        assert all(ls < s for ls, s in zip(local, img)) and cfg.model.class_token
    else:
        assert cfg.objective.mask_ratio == 0.9 and cfg.objective.mae_crop_scale == [0.5, 1.0]


def test_mae_with_random_resized_crops_runs(tmp_path):
    cfg = tiny_config(
        tmp_path / "mae",
        objective={"name": "mae", "mask_ratio": 0.9, "mae_crop_scale": [0.5, 1.0]},
        train={"steps": 2, "batch_size": 4},
    )
    assert domainfm.pretrain(cfg).name == "ckpt-0000002"
    with pytest.raises(ConfigError, match=r"objective\.mae_crop_scale"):
        domainfm.pretrain(tiny_config(tmp_path / "bad", objective={"name": "mae", "mae_crop_scale": [0.5, 2.0]}))


def test_multicrop_views_survive_a_batched_getitems_of_the_wrapped_dataset():
    class Batched(list):
        def __getitems__(self, indices):  # as the pathology tile datasets read regions in batches
            return [self[i] for i in indices]

    base = Batched({"image": torch.rand(1, 16, 16), "meta": {"path": str(i)}} for i in range(4))
    ds = MultiCropDataset(base, make_multicrop(2, (16, 16), (8, 8), n_local=1), seed=0)
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=list)))
    assert all(len(sample["views"]) == 3 for sample in batch)
