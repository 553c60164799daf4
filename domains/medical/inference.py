"""Whole-scan inference: sliding-window prediction written back in the source geometry, and
one embedding per scan.

Example:
    >>> import tempfile, warnings
    >>> import domainfm
    >>> from domainfm.demo import example_checkpoint
    >>> folder = Path(tempfile.mkdtemp())
    >>> seg, example = example_checkpoint("medical", folder, task="segmentation")  # tiny UNETR on 3 phantom CTs
    >>> model = domainfm.load(seg)
    >>> pred = predict_scan(model, folder / "data/images/c1.nii.gz", folder / "pred.nii.gz")
    >>> example.same_geometry(folder / "data/images/c1.nii.gz", pred)      # same shape/affine as the scan
    True
    >>> import numpy as np
    >>> np.load(embed_scans(model, folder / "data/images", folder / "emb.npz"))["embeddings"].shape  # one row per scan
    (3, 32)
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from domainfm.classmap import ClassMap, output_dtype
from domainfm.errors import DataError
from domainfm.io_safety import atomic_output, check_output, write_arrays_atomic

from .io import IMAGE_2D_SUFFIXES, is_dicom_file, is_nifti, read_image, write_nifti
from .large_predict import predict_streaming, should_stream
from .options import MedicalOptions, normalized, options_from_card
from .sources import discover
from .transforms import ORIENTATION_LABELS, build_transforms, domain_errors


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _card_setup(model):
    opts = options_from_card(model.card)
    crop = list((model.card.get("preprocessing") or {}).get("crop_size") or model.card["encoder"]["img_size"])
    return opts, crop


@dataclass
class ScanSetup:
    """How a scan is read for a model: the medical options (geometry and intensity recipe), the sliding
    window (the training crop) and, for a model with a normalisation of its own (trained on MONAI volumes
    held in memory, see :func:`setup_from_geometry`), that normalisation in place of the recipe."""

    opts: MedicalOptions
    crop: list[int]
    normalise: Callable[[torch.Tensor], torch.Tensor] | None = None


def scan_setup(model) -> ScanSetup:
    """The :class:`ScanSetup` a medical checkpoint's card records."""
    return ScanSetup(*_card_setup(model))


def setup_from_geometry(card: dict, geometry: dict, normalise: Callable[[torch.Tensor], torch.Tensor]) -> ScanSetup:
    """The :class:`ScanSetup` of a model trained on volumes held in memory (an ``arrays`` card whose
    ``geometry`` is medical): the orientation of the first training sample's affine and its spacing
    (volumes), the training size as the window, and the model's own ``normalise``.

    Example:
        >>> g = {"domain": "medical", "spatial_dims": 3, "spacing": [1.5, 1.5, 2.0],
        ...      "affine": [[-1.5, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]]}
        >>> s = setup_from_geometry({"encoder": {"img_size": 16}}, g, lambda x: x)
        >>> s.opts.orientation, s.opts.target_spacing, s.crop
        ('LAS', [1.5, 1.5, 2.0], [16, 16, 16])
    """
    dims = int(geometry.get("spatial_dims") or 3)
    spacing, affine = geometry.get("spacing"), geometry.get("affine")
    orientation = ""
    if dims == 3 and affine is not None and np.asarray(affine).shape == (4, 4):
        orientation = "".join(nib.aff2axcodes(np.asarray(affine, dtype=np.float64), labels=ORIENTATION_LABELS))
    opts = normalized(
        MedicalOptions(
            spatial_dims=dims,
            orientation=orientation,
            target_spacing=[float(v) for v in spacing[:dims]] if dims == 3 and spacing and len(spacing) >= 3 else None,
        )
    )
    size = card["encoder"]["img_size"]
    crop = [int(size)] * dims if isinstance(size, (int, float)) else [int(v) for v in size]
    return ScanSetup(opts, crop, normalise)


def _windows(shape, roi, overlap: float):
    """Start indices of windows of size ``roi`` covering ``shape`` (MONAI's dense patch layout)."""
    from monai.data.utils import dense_patch_slices  # heavy import (MONAI), loaded on first use

    interval = [max(1, int(r * (1 - overlap))) for r in roi]
    return dense_patch_slices(list(shape), list(roi), interval)


def _pad_to(x: torch.Tensor, roi) -> torch.Tensor:
    """Zero-pad (symmetric) the spatial dims of ``C x ...`` up to at least ``roi``."""
    from monai.transforms import SpatialPad  # heavy import (MONAI), loaded on first use

    if all(s >= r for s, r in zip(x.shape[1:], roi)):
        return x
    return torch.as_tensor(SpatialPad(spatial_size=[max(s, r) for s, r in zip(x.shape[1:], roi)])(x))


@torch.no_grad()
def window_embedding(model, image: torch.Tensor, roi, overlap: float = 0.25, batch_size: int = 4) -> torch.Tensor:
    """Mean of ``model.embed`` over sliding windows of ``roi`` covering ``image`` (``C x ...``) -> ``E``.

    Example:
        >>> import tempfile, warnings
        >>> import domainfm
        >>> from domainfm.demo import example_checkpoint
        >>> folder = Path(tempfile.mkdtemp())
        >>> ckpt, example = example_checkpoint("medical", folder)   # tiny MAE on 3 phantom CTs
        >>> model = domainfm.load(ckpt)
        >>> z = window_embedding(model, model.preprocess(folder / "data/images/c0.nii.gz"), [16, 16, 16])
        >>> z.shape
        torch.Size([32])
    """
    x = _pad_to(image, roi)
    slices = _windows(x.shape[1:], roi, overlap)
    dev = _model_device(model)
    out = []
    for i in range(0, len(slices), batch_size):
        batch = torch.stack([x[(slice(None),) + tuple(s)] for s in slices[i : i + batch_size]]).to(dev)
        out.append(model.embed(batch).float().cpu())
    return torch.cat(out).mean(0)


def _takes(path: Path, dims: int) -> bool:
    """Whether the medical readers take ``path`` as a scan of ``dims`` spatial dimensions."""
    if path.is_dir() or is_nifti(path) or is_dicom_file(path):
        return True
    return dims == 2 and path.suffix.lower() in IMAGE_2D_SUFFIXES


def _as_4x4(affine) -> np.ndarray:
    """A MetaTensor's affine as NIfTI's 4 x 4 (a 2D image's 3 x 3 gets an identity depth axis)."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape == (3, 3):
        a = np.array([[a[0, 0], a[0, 1], 0, a[0, 2]], [a[1, 0], a[1, 1], 0, a[1, 2]], [0, 0, 1, 0], [0, 0, 0, 1]])
    return a


@contextlib.contextmanager
def scan_input(input, geometry: dict) -> Iterator[Path]:
    """A path the medical readers take for ``input``, a model trained on ``geometry["from"]``'s data.

    A NIfTI/DICOM file or a DICOM folder (2D models: also PNG/JPEG/TIFF images) is used as is; a MONAI
    ``MetaTensor`` (``C x (D x) H x W``, or a dict holding it under ``image``) is written to a temporary
    NIfTI with its affine, so it is read, predicted and written back like a file. Anything else is a
    one-line :class:`DataError` naming the input and the training data.
    """
    dims = int(geometry.get("spatial_dims") or 3)
    image = input.get("image") if isinstance(input, dict) else input
    trained = f"this model was trained on {geometry.get('from') or 'MONAI volumes'}"
    if isinstance(image, (str, Path)):
        if not _takes(Path(image), dims):
            kinds = "NIfTI/DICOM volumes" if dims == 3 else "NIfTI/DICOM/PNG images"
            raise DataError(
                image,
                f"is not a medical scan the model takes; {trained}, so it predicts on {kinds} "
                "(.nii, .nii.gz, .dcm, a DICOM folder) and MONAI MetaTensors",
            )
        yield Path(image)
        return
    affine = getattr(image, "affine", None)
    if not isinstance(image, torch.Tensor) or affine is None or image.ndim != dims + 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(input).__name__
        raise DataError(
            None,
            f"cannot predict on {shape}: {trained}; give a NIfTI/DICOM file, or a MONAI MetaTensor "
            f"C x {'D x ' if dims == 3 else ''}H x W with its affine (e.g. from LoadImaged)",
        )
    arr = image.detach().cpu().as_subclass(torch.Tensor).numpy()
    data = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    with tempfile.TemporaryDirectory(prefix="domainfm-scan-") as tmp:
        yield write_nifti(data, _as_4x4(affine.detach().cpu().numpy()), Path(tmp) / "input.nii.gz")


def _prepare(model, input_path, setup: ScanSetup | None = None):
    """``(setup, deterministic transforms, MetaTensor for the inversion, model-ready C x ... tensor)``."""
    setup = setup or scan_setup(model)
    det, _ = build_transforms(setup.opts, setup.crop, "inference", intensity=setup.normalise is None)
    with domain_errors():
        data = det({"image": str(input_path)})
    img = data["image"]
    x = img.as_tensor().float()
    if setup.normalise is not None:
        x = setup.normalise(x)
    if not bool(torch.isfinite(x).all()):
        raise DataError(input_path, "preprocessed scan has NaN/inf values")
    return setup, det, img, x


def segment_scan(
    model, input_path, overlap: float | None = None, sw_batch_size: int | None = None, setup: ScanSetup | None = None
):
    """Class probabilities of a whole scan on its ORIGINAL voxel grid: ``(K x *shape tensor, meta)``.

    Sliding-window inference (MONAI, Gaussian blending) on the preprocessed volume, softmax, then
    ``Compose.inverse`` of the preprocessing geometry (spacing, orientation, foreground crop, resize).

    Example:
        >>> import tempfile, warnings
        >>> import domainfm
        >>> from domainfm.demo import example_checkpoint
        >>> folder = Path(tempfile.mkdtemp())
        >>> seg, example = example_checkpoint("medical", folder, task="segmentation")  # tiny UNETR on 3 phantom CTs
        >>> import nibabel as nib
        >>> probs, meta = segment_scan(domainfm.load(seg), folder / "data/images/c0.nii.gz"); labels = probs.argmax(0)
        >>> tuple(labels.shape) == nib.load(folder / "data/images/c0.nii.gz").shape    # on the source grid
        True
    """
    from monai.data import MetaTensor  # heavy import (MONAI), loaded on first use
    from monai.inferers import sliding_window_inference  # heavy import (MONAI), loaded on first use

    setup, det, img, x = _prepare(model, input_path, setup)
    opts, crop = setup.opts, setup.crop
    overlap = opts.sw_overlap if overlap is None else overlap
    sw_batch_size = sw_batch_size or opts.sw_batch_size
    was = model.training
    model.eval()
    dev = _model_device(model)
    n_windows = len(_windows(_pad_to(x[:1], list(crop)).shape[1:], list(crop), overlap))
    # on a GPU, windows are blended there in buffered slabs and the whole-scan output accumulates in RAM
    # (MONAI buffer_steps), so device memory grows with neither the volume nor the class count
    buffered = {"sw_device": dev, "device": torch.device("cpu"), "buffer_steps": 1} if dev.type == "cuda" else {}
    try:
        with torch.no_grad():
            logits = sliding_window_inference(
                x[None].to(dev),
                roi_size=list(crop),
                sw_batch_size=sw_batch_size,
                predictor=model.logits,
                overlap=overlap,
                mode="gaussian",
                progress=n_windows >= 64,
                **buffered,
            )
    finally:
        model.train(was)
    probs = torch.as_tensor(logits)[0].float().cpu()
    del logits
    probs.sub_(probs.amax(0, keepdim=True)).exp_()  # softmax in place: one K x volume buffer, not three
    probs.div_(probs.sum(0, keepdim=True))
    pred = MetaTensor(probs, meta=dict(img.meta), applied_operations=list(img.applied_operations))
    with domain_errors():
        inv = det.inverse({"image": pred})["image"]
    probs_orig = torch.as_tensor(inv).float()
    original_shape = tuple(int(v) for v in np.asarray(img.meta["spatial_shape"]).tolist())
    if tuple(probs_orig.shape[1:]) != original_shape:
        raise DataError(
            input_path,
            f"internal error: inverted prediction shape {tuple(probs_orig.shape[1:])} != input {original_shape}",
        )
    return probs_orig, dict(img.meta)


def classify_scan(
    model, input_path, overlap: float | None = None, sw_batch_size: int | None = None, setup: ScanSetup | None = None
) -> dict:
    """Class probabilities of a whole scan (logits averaged over sliding windows of the model size)."""
    setup, _, _, x = _prepare(model, input_path, setup)
    opts, crop = setup.opts, setup.crop
    overlap = opts.sw_overlap if overlap is None else overlap
    sw_batch_size = sw_batch_size or opts.sw_batch_size
    dev = _model_device(model)
    task = model.card.get("task")
    xp = _pad_to(x, list(crop))
    slices = _windows(xp.shape[1:], list(crop), overlap)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = torch.cat(
                [
                    model.logits(
                        torch.stack([xp[(slice(None),) + tuple(s)] for s in slices[i : i + sw_batch_size]]).to(dev)
                    )
                    .float()
                    .cpu()
                    for i in range(0, len(slices), sw_batch_size)
                ]
            ).mean(0)
    finally:
        model.train(was)
    probs = logits.sigmoid() if task == "multilabel" else logits.softmax(0)
    classes = model.card.get("classes") or [str(i) for i in range(len(probs))]
    return {
        "path": str(input_path),
        "classes": classes,
        "probabilities": [float(p) for p in probs],
        "prediction": classes[int(probs.argmax())]
        if task != "multilabel"
        else [c for c, p in zip(classes, probs) if p > 0.5],
        "windows": len(slices),
    }


def predict_scan(
    model,
    input_path,
    out_path,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    save_probabilities: bool = False,
    setup: ScanSetup | None = None,
    memory_budget: int | str | None = None,
    progress: bool | None = None,
) -> Path:
    """Predict a whole scan and write it in the ORIGINAL geometry (shape, affine, orientation).

    Segmentation checkpoints: :func:`segment_scan`, argmax, written as NIfTI with the input's affine
    and header (DICOM series: the series' RAS affine; PNG input with a ``.png`` output: a PNG mask).
    Classification checkpoints: :func:`classify_scan`, written as JSON
    ``{"path", "classes", "probabilities", "prediction"}``. ``setup``: how the scan is read (default: the
    card's medical recipe; :func:`setup_from_geometry` for a model trained on volumes held in memory).

    A volume whose in-memory prediction would exceed ``memory_budget`` (bytes or ``"4G"``; default the
    ``DOMAINFM_PREDICT_MEMORY`` environment variable, else half the available RAM) is segmented slab by slab
    from an uncompressed ``.nii`` straight into the output file (:mod:`.large_predict`; ``progress``: windows
    done on stderr); the result is the same up to float rounding.

    Example:
        >>> import tempfile, warnings
        >>> import domainfm
        >>> from domainfm.demo import example_checkpoint
        >>> folder = Path(tempfile.mkdtemp())
        >>> seg, example = example_checkpoint("medical", folder, task="segmentation")  # tiny UNETR on 3 phantom CTs
        >>> predict_scan(domainfm.load(seg), folder / "data/images/c0.nii.gz", folder / "c0_pred.nii.gz").name
        'c0_pred.nii.gz'
    """
    out_path = Path(out_path)
    src = str(input_path)
    setup = setup or scan_setup(model)
    opts = setup.opts
    task = model.card.get("task")
    if task in ("classification", "multilabel"):
        final = out_path if out_path.suffix.lower() == ".json" else Path(str(out_path) + ".json")
    elif opts.spatial_dims == 2 and not is_nifti(src) and out_path.suffix.lower() in (".png", ".tif", ".tiff"):
        final = out_path
    else:
        final = out_path if is_nifti(out_path) else Path(str(out_path) + ".nii.gz")
    check_output(final, [input_path])  # before any work: never the input, a writable place
    if task in ("classification", "multilabel"):
        res = classify_scan(model, input_path, overlap, sw_batch_size, setup)
        with atomic_output(final, [input_path]) as tmp:
            tmp.write_text(json.dumps(res, indent=2))
        return final
    if final.name.lower().endswith((".nii", ".nii.gz")) and should_stream(model, src, setup, final, memory_budget):
        return predict_streaming(model, src, final, setup, overlap, sw_batch_size, save_probabilities, progress)
    probs, meta = segment_scan(model, input_path, overlap, sw_batch_size, setup)
    class_map = ClassMap.from_card(model.card)  # contiguous indices back to the label ids of the training masks
    index = probs.argmax(0).numpy()
    ids = class_map.ids if class_map else list(range(probs.shape[0]))
    labels = (class_map.to_ids(index) if class_map else index).astype(output_dtype(ids))
    if final.suffix.lower() in (".png", ".tif", ".tiff"):
        scale = 255 // max(1, max(ids))
        with atomic_output(final, [input_path]) as tmp:
            Image.fromarray((labels * scale).astype(np.uint8)).save(tmp)
        return final
    affine = np.asarray(meta.get("original_file_affine", meta["original_affine"]), dtype=np.float64)
    if is_nifti(src):
        affine = nib.load(src).affine
    like = src if is_nifti(src) else None
    written = write_nifti(labels, affine, final, like=like)
    if save_probabilities:
        write_nifti(
            np.moveaxis(probs.numpy(), 0, -1).astype(np.float32),
            affine,
            str(written).replace(".nii", "_probs.nii"),
            like=like,
        )
    return written


def evaluate_segmentation(model, data, overlap: float | None = None) -> dict:
    """Whole-scan Dice and HD95 (mm) per foreground class, in each scan's ORIGINAL geometry.

    ``data`` is anything :func:`~domainfm.medical.sources.discover` reads with masks (manifest with a
    ``mask`` column, ``imagesTr``/``labelsTr`` folders, Decathlon JSON). Uses MONAI ``DiceMetric``
    and ``HausdorffDistanceMetric(percentile=95)`` with the voxel spacing of each scan.

    Example:
        >>> import tempfile, warnings
        >>> import domainfm
        >>> from domainfm.demo import example_checkpoint
        >>> folder = Path(tempfile.mkdtemp())
        >>> seg, example = example_checkpoint("medical", folder, task="segmentation")  # tiny UNETR on 3 phantom CTs
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")      # MONAI warns when a 2-step model predicts no lesion at all
        ...     scores = evaluate_segmentation(domainfm.load(seg), folder / "data")
        >>> sorted(scores), scores["scans"], 0.0 <= scores["dice"] <= 1.0
        (['dice', 'hd95_mm', 'per_scan', 'scans'], 3, True)
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric  # heavy import (MONAI), loaded on first use

    opts, _ = _card_setup(model)
    items, _ = discover(data, opts, "validation" if str(data).endswith(".json") else "training")
    items = [it for it in items if "mask" in it]
    if not items:
        raise DataError(data, "no scans with masks to evaluate")
    k = int(model.card.get("num_classes") or 2)
    per_scan = []
    for it in items:
        probs, meta = segment_scan(model, it["image"], overlap)
        mask = read_image(it["mask"], spatial_dims=opts.spatial_dims).as_tensor().long()
        if tuple(mask.shape) != tuple(probs.shape[1:]):
            raise DataError(
                it["mask"], f"mask shape {tuple(mask.shape)} differs from the scan {tuple(probs.shape[1:])}"
            )
        cmap = ClassMap.from_card(model.card)
        if cmap is not None:  # masks hold label ids; the model's classes are indices into the map
            mask = cmap.to_index(mask, it["mask"], strict=False).clamp_min(0)
        pred = torch.nn.functional.one_hot(probs.argmax(0), k).movedim(-1, 0)[None].float()
        truth = torch.nn.functional.one_hot(mask.clamp(0, k - 1), k).movedim(-1, 0)[None].float()
        aff = np.asarray(meta["original_affine"])
        spacing = [float(v) for v in np.sqrt((aff[: opts.spatial_dims, : opts.spatial_dims] ** 2).sum(0))]
        dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(pred, truth)
        with warnings.catch_warnings():  # MONAI's own deprecation notice inside get_mask_edges
            warnings.simplefilter("ignore", FutureWarning)
            hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
                pred, truth, spacing=spacing
            )
        per_scan.append({"id": it.get("id"), "dice": [float(v) for v in dice[0]], "hd95_mm": [float(v) for v in hd[0]]})
    dice_all = np.asarray([s["dice"] for s in per_scan], dtype=float)
    hd_all = np.asarray([s["hd95_mm"] for s in per_scan], dtype=float)
    finite_hd = hd_all[np.isfinite(hd_all)]  # HD95 is undefined (inf/NaN) where a class is missing
    return {
        "dice": float(np.nanmean(dice_all)) if np.isfinite(dice_all).any() else float("nan"),
        "hd95_mm": float(finite_hd.mean()) if finite_hd.size else float("nan"),
        "scans": len(per_scan),
        "per_scan": per_scan,
    }


@torch.no_grad()
def _embed_items(data, opts) -> tuple[list[dict], list[str] | None]:
    """The items to embed, and for a MedMNIST-style ``.npz`` every split it holds (the ``splits`` column)."""
    if not str(data).endswith(".npz"):
        return discover(data, opts, "training")[0], None
    try:
        with np.load(data, allow_pickle=False) as z:
            names = [s for s in ("train", "val", "test") if f"{s}_images" in z.files]
    except (OSError, ValueError) as exc:
        raise DataError(data, f"unreadable .npz ({exc})") from None
    if not names:
        raise DataError(data, "no train_images/val_images/test_images arrays to embed")
    items, splits = [], []
    for name in names:
        part, _ = discover(data, opts, name)
        items += part
        splits += [name] * len(part)
    return items, splits


def _embed_features(model, items: list[dict], opts, crop, overlap: float, batch_size: int) -> list[torch.Tensor]:
    """Embeddings of ``items``: 2D images in batches at the model size, volumes as the mean of sliding windows."""
    prep = model.preprocess
    dev = _model_device(model)
    model.eval()
    feats = []
    if opts.spatial_dims == 2:
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            xs = torch.stack(
                [prep(it["image"] if not isinstance(it["image"], list) else it["image"][0]) for it in chunk]
            )
            feats.append(model.embed(xs.to(dev)).float().cpu())
        return feats
    for it in items:
        src = it["image"]
        if isinstance(src, list):
            det, _ = build_transforms(opts, crop, "inference")
            with domain_errors():
                x = det({"image": src})["image"].as_tensor().float()
        else:
            x = prep(src)
        feats.append(window_embedding(model, x, crop, overlap)[None])
    return feats


def embed_scans(model, data, out, batch_size: int = 64, overlap: float | None = None) -> Path:
    """One embedding per scan of ``data`` (folder, manifest, Decathlon JSON, ``.npz`` or one scan).

    Volumes: mean of the embeddings of sliding windows of the training crop. 2D images: one pass at
    the model size. Writes ``embeddings`` (N x E), ``ids``, ``paths`` and ``labels`` (if known) to
    ``.npz`` or ``.h5``; for a MedMNIST ``.npz`` every split it holds, named in ``splits``.

    Example:
        >>> import tempfile, warnings
        >>> import domainfm
        >>> from domainfm.demo import example_checkpoint
        >>> folder = Path(tempfile.mkdtemp())
        >>> ckpt, example = example_checkpoint("medical", folder)   # tiny MAE on 3 phantom CTs
        >>> model = domainfm.load(ckpt)
        >>> out = embed_scans(model, folder / "data/images", folder / "emb.npz")
        >>> import numpy as np
        >>> arrays = np.load(out)
        >>> arrays["embeddings"].shape, len(arrays["paths"])
        ((3, 32), 3)
    """
    opts, crop = _card_setup(model)
    overlap = opts.sw_overlap if overlap is None else overlap
    out = Path(out)
    if out.suffix.lower() not in (".h5", ".hdf5", ".npz"):
        out = out.with_suffix(".npz")
    check_output(out, [data], what="embed --out")  # before embedding every scan
    items, splits = _embed_items(data, opts)
    feats = _embed_features(model, items, opts, crop, overlap, batch_size)
    ids, paths, labels = [], [], []
    for it in items:
        ids.append(str(it.get("id")))
        paths.append(str(it["image"][0] if isinstance(it["image"], list) else it["image"]))
        if "label" in it:
            labels.append(int(it["label"]))
    arrays = {
        "embeddings": torch.cat(feats).numpy().astype(np.float32),
        "ids": np.asarray(ids),
        "paths": np.asarray(paths),
    }
    if splits is not None:
        arrays["splits"] = np.asarray(splits)
    if labels and len(labels) == len(ids):
        arrays["labels"] = np.asarray(labels)
    return write_arrays_atomic(out, arrays)
