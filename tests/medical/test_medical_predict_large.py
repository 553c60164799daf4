"""A volume larger than the memory budget is segmented slab by slab from an uncompressed .nii straight into the
output NIfTI: the same labels and probabilities as the in-memory path (forced with a tiny budget on small volumes,
with a permuted/flipped affine and with a spacing the recipe keeps), and a 512 x 512 x 400 volume predicted in a
child process whose peak RSS is read from the OS (no timing)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from domainfm.medical.inference import predict_scan
from domainfm.medical.large_predict import in_memory_bytes, memory_budget, should_stream

ROOT = Path(__file__).resolve().parents[2]
PERMUTED = np.array([[0.0, 0.0, -2.0, 40.0], [-1.2, 0.0, 0.0, 10.0], [0.0, 1.4, 0.0, -5.0], [0, 0, 0, 1.0]])
PEAK_GB = 2.0  # the child imports torch and MONAI (~0.9 GB); the in-memory path would need ~4.4 GB


class TinySeg(nn.Module):
    """A 3-class 3D segmenter (one convolution) with a CT card: window [-200, 300], RAS, 16^3 windows."""

    def __init__(self, crop=(16, 16, 16), kernel: int = 3, **options):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 3, kernel, padding=kernel // 2)
        opts = {"modality": "ct", "window_range": [-200.0, 300.0], "orientation": "RAS", "sw_overlap": 0.25, **options}
        self.card = {"task": "segmentation", "num_classes": 3, "classes": ["bg", "a", "b"],
                     "class_map": None, "encoder": {"img_size": list(crop)},
                     "preprocessing": {"options": opts, "crop_size": list(crop)}}  # fmt: skip

    def logits(self, x):
        return self.conv(x) * 4


def _volume(shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.normal(0, 40, shape).astype(np.int16)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    ball = (zz - shape[0] / 3) ** 2 + (yy - shape[1] / 2) ** 2 + (xx - shape[2] / 2) ** 2 < (min(shape) / 4) ** 2
    vol[ball] += 200
    return vol


@pytest.mark.parametrize(
    ("affine", "options", "out_name"),
    [
        (PERMUTED, {}, "pred.nii.gz"),  # axes permuted and flipped on the way to RAS
        (np.diag([1.5, 1.5, 2.0, 1.0]), {"target_spacing": [1.5, 1.5, 2.0]}, "pred.nii"),  # spacing kept
    ],
)
def test_streaming_path_equals_the_in_memory_path(tmp_path, affine, options, out_name):
    src = tmp_path / "scan.nii"
    nib.save(nib.Nifti1Image(_volume((41, 37, 35)), affine), src)
    model = TinySeg(**options)
    whole = predict_scan(model, src, tmp_path / "mem" / out_name, save_probabilities=True, memory_budget="100G")
    streamed = predict_scan(model, src, tmp_path / "slab" / out_name, save_probabilities=True, memory_budget=1)
    a, b = nib.load(whole), nib.load(streamed)
    assert b.shape == a.shape == (41, 37, 35) and b.get_data_dtype() == a.get_data_dtype()
    np.testing.assert_array_equal(b.affine, a.affine)
    assert a.header["qform_code"] == b.header["qform_code"] and a.header["sform_code"] == b.header["sform_code"]
    la, lb = np.asarray(a.dataobj), np.asarray(b.dataobj)
    assert (la == lb).mean() > 0.999 and len(np.unique(la)) == 3  # argmax ties aside, the same labels
    pa = np.asarray(nib.load(str(whole).replace(".nii", "_probs.nii")).dataobj)
    pb = np.asarray(nib.load(str(streamed).replace(".nii", "_probs.nii")).dataobj)
    np.testing.assert_allclose(pb, pa, atol=1e-5)
    assert sorted(p.name for p in streamed.parent.iterdir()) == sorted(
        [out_name, out_name.replace(".nii", "_probs.nii")]
    )


def test_budget_and_fallbacks(tmp_path, caplog, monkeypatch):
    assert memory_budget("2G") == 2 * 10**9 and memory_budget(123) == 123
    monkeypatch.setenv("DOMAINFM_PREDICT_MEMORY", "5M")
    assert memory_budget() == 5 * 10**6
    assert in_memory_bytes((10, 10, 10), 1, 2) == 1000 * 42
    gz = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(_volume((20, 20, 20)), np.eye(4)), gz)
    model = TinySeg()
    setup = __import__("domainfm.medical.inference", fromlist=["scan_setup"]).scan_setup(model)
    with caplog.at_level(logging.WARNING, logger="domainfm.medical"):
        assert not should_stream(model, gz, setup, tmp_path / "p.nii.gz", budget=1)  # compressed: in memory
    assert "gunzip" in caplog.text
    out = predict_scan(model, gz, tmp_path / "p.nii.gz", memory_budget=1)  # still predicted (in memory)
    assert nib.load(out).shape == (20, 20, 20)


CHILD = r"""
import json, resource, sys
import torch
sys.path.insert(0, sys.argv[3])
from tests.medical.test_medical_predict_large import TinySeg
from domainfm.medical.inference import predict_scan
torch.set_num_threads(1)
model = TinySeg(crop=(64, 64, 64), kernel=1)
out = predict_scan(model, sys.argv[1], sys.argv[2], sw_batch_size=8, memory_budget="200M", progress=False)
hwm = int(next(x.split()[1] for x in open("/proc/self/status") if x.startswith("VmHWM")))  # kB: own peak
print(json.dumps({"out": str(out), "maxrss_kb": hwm}))
"""


def _write_big_nii(path: Path, shape) -> Path:
    """An int16 .nii of ``shape`` written through a memory map of its data block (never whole in memory)."""
    zeros = np.lib.stride_tricks.as_strided(np.zeros(1, np.int16), shape=shape, strides=(0, 0, 0))
    nib.save(nib.Nifti1Image(zeros, np.diag([-0.8, -0.8, 1.0, 1.0])), path)
    proxy = nib.load(path).dataobj
    data = np.memmap(path, np.int16, "r+", offset=int(proxy.offset), shape=shape, order="F")
    for z in range(0, shape[2], 50):
        data[:, :, z : z + 50] = _volume((shape[0], shape[1], min(50, shape[2] - z)), seed=z)
    data.flush()
    return path


def test_large_volume_streams_with_bounded_memory(tmp_path):
    shape = (512, 512, 400)
    src = _write_big_nii(tmp_path / "big.nii", shape)
    assert in_memory_bytes(shape, 1, 3) > 4 * 10**9
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(tmp_path / "pred.nii.gz"), str(ROOT)],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-3:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_gb = figures["maxrss_kb"] * 1024 / 1e9
    assert peak_gb < PEAK_GB, f"peak RSS {peak_gb:.2f} GB"
    pred = nib.load(figures["out"])
    assert pred.shape == shape and np.allclose(pred.affine, nib.load(src).affine)
    middle = np.asarray(pred.dataobj[:, :, 190:200])
    assert middle.dtype == np.uint8 and set(np.unique(middle)) <= {0, 1, 2}
