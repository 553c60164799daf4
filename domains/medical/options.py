"""Options of the medical domain (``data.options`` in YAML, ``--flag`` on the CLI) and CT window presets.

Example:
    >>> opts = MedicalOptions(modality="ct", window="lung")
    >>> resolve_window(opts)
    (-1350.0, 150.0)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from domainfm.errors import ConfigError
from domainfm.utils import parse_list

#: CT intensity windows as (level, width) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (60.0, 400.0),
    "mediastinum": (50.0, 350.0),
}

MODALITIES = ("auto", "ct", "mri", "pet", "xray")
MAX_CROP = 1024  # voxels a side of a training crop (a 1024^3 crop is already about 4 GB of float32)


@dataclass
class MedicalOptions:
    """How scans are read and prepared.

    Attributes:
        spatial_dims: 3 for CT/MRI volumes, 2 for X-rays / single slices.
        modality: ``auto`` (the default: inferred from the scans' headers and intensities, see
            :mod:`domainfm.medical.modality`), ``ct`` (HU window), ``mri`` (percentile clip + z-score),
            ``pet`` (SUV-like: divided by the mean foreground uptake, clipped at 20) or ``xray``
            (min-max to [0, 1]).
        window: CT window preset (``soft_tissue``, ``lung``, ``bone``, ``brain``, ``abdomen``,
            ``mediastinum``); ignored when ``window_range`` is given.
        window_range: explicit CT window ``[min_hu, max_hu]`` (list or ``"-1000,400"``).
        target_spacing: voxel spacing in mm to resample to (``[1.5, 1.5, 2.0]`` or ``"1.5,1.5,2"``);
            ``None`` keeps the native spacing.
        orientation: axis codes to reorient to (``RAS``); empty string keeps the file's orientation.
        crop_size: training crop (``[96, 96, 96]``); ``None`` uses ``data.img_size``.
        foreground_crop: crop each scan to its foreground (above the window minimum) first.
        percentiles: MRI clipping percentiles ``[low, high]``.
        sequences: multi-sequence MRI: manifest columns (or Decathlon channel names) stacked as
            channels, e.g. ``[t1, t2, flair]``.
        pos_neg: ratio of positive (foreground-centred) to negative crops for segmentation.
        image_key, label_key, mask_key: manifest column names.
        resize_2d: 2D images are resized to ``img_size`` (True) instead of cropped.
        cache_dir: folder for ``data.cache: disk`` (default ``<out>/cache``).
        sw_overlap: sliding-window overlap used by ``predict``/``embed``.
        sw_batch_size: windows per forward pass in ``predict``/``embed``.
    """

    spatial_dims: int = 3
    modality: str = "auto"
    window: str = "soft_tissue"
    window_range: list[float] | str | None = None
    target_spacing: list[float] | str | None = None
    orientation: str = "RAS"
    crop_size: list[int] | str | None = None
    foreground_crop: bool = False
    percentiles: list[float] | str = field(default_factory=lambda: [0.5, 99.5])
    sequences: list[str] | str | None = None
    pos_neg: list[float] | str = field(default_factory=lambda: [1.0, 1.0])
    image_key: str = "image"
    label_key: str = "label"
    mask_key: str = "mask"
    resize_2d: bool = True
    cache_dir: str | None = None
    sw_overlap: float = 0.25
    sw_batch_size: int = 2


def as_list(value: Any, cast=float, n: int | None = None, key: str = "option") -> list | None:
    """Turn ``"1.5,1.5,2"``, ``1.5`` or ``[1.5, 1.5, 2]`` into a list of ``cast`` (length ``n``).

    Example:
        >>> as_list("1,2,3", int)
        [1, 2, 3]
    """
    if value is None or value == "":
        return None
    parts = parse_list(value)
    try:
        out = [cast(float(p)) if cast is int else cast(p) for p in parts]
    except (TypeError, ValueError):
        raise ConfigError(f"data.options.{key}: cannot read {value!r} as a list of {cast.__name__}") from None
    if n is not None:
        if len(out) == 1:
            out = out * n
        if len(out) != n:
            raise ConfigError(f"data.options.{key}: expected {n} values, got {value!r}")
    return out


def resolve_window(opts: MedicalOptions) -> tuple[float, float]:
    """The CT window ``(min_hu, max_hu)`` from ``window_range`` or the ``window`` preset.

    Raises :class:`ConfigError` naming the preset if it is unknown.
    """
    rng = as_list(opts.window_range, float, 2, "window_range")
    if rng is not None:
        lo, hi = rng
        if not hi > lo:
            raise ConfigError(f"data.options.window_range: max {hi} must exceed min {lo}")
        return float(lo), float(hi)
    if opts.window not in WINDOW_PRESETS:
        raise ConfigError(
            f"data.options.window: unknown window preset {opts.window!r}; "
            f"choose one of {', '.join(WINDOW_PRESETS)} or give window_range: [min_hu, max_hu]"
        )
    level, width = WINDOW_PRESETS[opts.window]
    return level - width / 2.0, level + width / 2.0


def validate(opts: MedicalOptions) -> MedicalOptions:
    """Check option values that a dataclass type cannot (raises :class:`ConfigError`)."""
    if opts.spatial_dims not in (2, 3):
        raise ConfigError(f"data.options.spatial_dims must be 2 or 3, got {opts.spatial_dims}")
    if opts.modality not in MODALITIES:
        raise ConfigError(f"data.options.modality must be one of {', '.join(MODALITIES)}, got {opts.modality!r}")
    if opts.modality in ("ct", "auto"):
        resolve_window(opts)
    lo, hi = as_list(opts.percentiles, float, 2, "percentiles")
    if not 0.0 <= lo < hi <= 100.0:
        raise ConfigError(f"data.options.percentiles must be [low, high] with 0 <= low < high <= 100, got {[lo, hi]}")
    as_list(opts.pos_neg, float, 2, "pos_neg")
    spacing = as_list(opts.target_spacing, float, opts.spatial_dims, "target_spacing")
    if spacing is not None and not all(v > 0 for v in spacing):
        raise ConfigError(f"data.options.target_spacing must be positive millimetres per axis, got {spacing}")
    crop = as_list(opts.crop_size, int, opts.spatial_dims, "crop_size")
    if crop is not None and not all(1 <= c <= MAX_CROP for c in crop):
        raise ConfigError(f"data.options.crop_size must be 1..{MAX_CROP} voxels per axis, got {crop}")
    return opts


def normalized(opts: MedicalOptions) -> MedicalOptions:
    """A validated copy of ``opts`` whose list-valued options are real lists (comma strings parsed).

    Example:
        >>> normalized(MedicalOptions(target_spacing="1.5,1.5,2")).target_spacing
        [1.5, 1.5, 2.0]
    """

    validate(opts)
    seqs = opts.sequences
    if isinstance(seqs, str):
        seqs = [s.strip() for s in seqs.split(",") if s.strip()]
    return dataclasses.replace(
        opts,
        window_range=as_list(opts.window_range, float, 2, "window_range"),
        target_spacing=as_list(opts.target_spacing, float, opts.spatial_dims, "target_spacing"),
        crop_size=as_list(opts.crop_size, int, opts.spatial_dims, "crop_size"),
        percentiles=as_list(opts.percentiles, float, 2, "percentiles"),
        pos_neg=as_list(opts.pos_neg, float, 2, "pos_neg"),
        sequences=list(seqs) if seqs else None,
    )


def options_from_card(card: dict) -> MedicalOptions:
    """The :class:`MedicalOptions` recorded in a checkpoint card."""
    rec = (card.get("preprocessing") or {}).get("options")
    if rec is None:
        raise ConfigError("the checkpoint card has no medical preprocessing record (preprocessing.options)")
    return normalized(MedicalOptions(**rec))
