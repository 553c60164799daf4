"""What an exported medical model is fed (:meth:`MedicalDomain.export_input`): the scan on the card's grid
(orientation, spacing) in its native intensities, with the CT window done inside the graph.

A CT window is a per-voxel map (``(HU - min) / (max - min)`` clipped to ``[0, 1]``), so the exported graph
takes Hounsfield units. MRI (percentile clip + z-score), PET (SUV-like) and X-ray (min-max) recipes use
statistics of the whole image, which one window of a sliding-window pass does not see: their graphs take
the normalised input and the metadata carries the card's recipe.

Example:
    >>> card = {"encoder": {"in_chans": 1, "img_size": [16, 16, 16]},
    ...         "preprocessing": {"spatial_dims": 3, "modality": "ct", "orientation": "RAS",
    ...                           "target_spacing": [2.0, 2.0, 2.0], "crop_size": [16, 16, 16],
    ...                           "normalization": {"kind": "ct_window", "min_hu": -160.0, "max_hu": 240.0}}}
    >>> rec = export_input(card)
    >>> rec["normalization"]["mean"], rec["normalization"]["std"], rec["normalization"]["clip"]
    ([-160.0], [400.0], [0.0, 1.0])
    >>> rec["spacing_mm"], rec["orientation"], rec["channels"]
    ([2.0, 2.0, 2.0], 'RAS', ['intensity'])
"""

from __future__ import annotations


def _normalization(norm: dict, channels: int) -> dict | None:
    if norm.get("kind") != "ct_window":
        return None
    lo, hi = float(norm["min_hu"]), float(norm["max_hu"])
    return {
        "mean": [lo] * channels,
        "std": [hi - lo] * channels,
        "clip": [0.0, 1.0],
        "nan_to_zero": False,
        "text": f"CT window [{lo:g}, {hi:g}] HU to [0, 1], clipped",
    }


def _channel_names(pre: dict, channels: int) -> list[str]:
    if pre.get("sequences"):
        return list(pre["sequences"])
    return ["intensity"] if channels == 1 else [f"channel{i}" for i in range(channels)]


def _pixels_text(pre: dict, dims: int, inside: bool) -> str:
    """What the input values are, in words: units and the grid they are on."""
    steps = [f"reoriented to {pre['orientation']}"] if dims == 3 and pre.get("orientation") else []
    spacing = pre.get("target_spacing")
    steps.append(f"resampled to {spacing} mm" if spacing else "on the file's own voxel grid")
    if dims == 2 and (pre.get("options") or {}).get("resize_2d", True):
        steps.append("resized to the model size")
    units = "Hounsfield units" if inside else "intensities normalised as `recipe` says"
    return f"{units}, {', '.join(steps)}"


def export_input(card: dict) -> dict:
    """The input record of an exported medical model (see :meth:`domainfm.domain.Domain.export_input`)."""
    pre = card.get("preprocessing") or {}
    enc = card.get("encoder") or {}
    channels = int(enc.get("in_chans") or pre.get("in_chans") or 1)
    norm = _normalization(pre.get("normalization") or {}, channels)
    dims = int(pre.get("spatial_dims") or len(enc.get("img_size") or [0, 0, 0]))
    return {
        "channels": _channel_names(pre, channels),
        "pixels": _pixels_text(pre, dims, norm is not None),
        "window": list(pre.get("crop_size") or enc.get("img_size") or []),
        "overlap": (pre.get("options") or {}).get("sw_overlap", 0.25),
        "normalization": norm,
        "modality": pre.get("modality"),
        "spacing_mm": pre.get("target_spacing"),
        "orientation": pre.get("orientation") if dims == 3 else None,
        "recipe": pre.get("normalization"),
    }
