"""Input channels of imported weights mapped by name: band names and wavelengths of the source and the target,
and the patch-embedding kernel rebuilt for the target's channels (see docs/weights.md, "Channels").

Example:
    >>> import torch
    >>> kernel, notes = map_channels(torch.ones(8, 3, 2, 2), ["red", "green", "blue"], [["grey"]])
    >>> tuple(kernel.shape), float(kernel[0, 0, 0, 0])
    ((8, 1, 2, 2), 3.0)
"""

from __future__ import annotations

import torch

from domainfm.errors import ConfigError

# central wavelengths (µm) of common band names, for the wavelength patch embed's table
BAND_WAVELENGTHS = {
    "red": 0.665,
    "green": 0.56,
    "blue": 0.49,
    "nir": 0.842,
    "b01": 0.443,
    "b02": 0.49,
    "b03": 0.56,
    "b04": 0.665,
    "b05": 0.705,
    "b06": 0.74,
    "b07": 0.783,
    "b08": 0.842,
    "b8a": 0.865,
    "b09": 0.945,
    "b10": 1.375,
    "b11": 1.61,
    "b12": 2.19,
}


_ALIASES = {"r": "red", "g": "green", "b": "blue", "gray": "grey", "l": "grey", "luminance": "grey"}


# Sentinel-2 names (zero-padded) also answer to colour names; bare numbers (B4, B5) differ between sensors
_SENTINEL2_RGB = {"b04": "red", "b03": "green", "b02": "blue", "b08": "nir"}


def _norm_name(name: str) -> str:
    n = str(name).strip().lower()
    return _ALIASES.get(n, n)


def channel_name_set(entry) -> set[str]:
    names = {_norm_name(n) for n in (entry if isinstance(entry, (list, tuple, set)) else [entry])}
    return names | {_SENTINEL2_RGB[n] for n in names if n in _SENTINEL2_RGB}


def as_name_list(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def source_channel_names(in_chans: int, source_bands=None, hf_config: dict | None = None) -> tuple[list[str], str]:
    """Names of the source's input channels and where they came from (option, config.json, default)."""
    given = as_name_list(source_bands)
    origin = "source_bands option"
    if given is None and hf_config:
        for key in ("bands", "band_names", "channel_names"):
            if isinstance(hf_config.get(key), list):
                given, origin = [str(b) for b in hf_config[key]], f"config.json {key}"
                break
    if given is None:
        if in_chans == 3:
            return ["red", "green", "blue"], "default for 3-channel (ImageNet-style) weights"
        if in_chans == 1:
            return ["grey"], "default for 1-channel weights"
        raise ConfigError(
            f"the weights take {in_chans} input channels: name them with source_bands=B01,B02,... "
            "so they can be mapped by name"
        )
    if len(given) != in_chans:
        raise ConfigError(
            f"source_bands names {len(given)} channels ({', '.join(given)}) but the weights take {in_chans}"
        )
    return given, origin


def target_channel_names(domain, cfg, enc_kwargs: dict, target_bands=None) -> list[list[str]]:
    """Each target channel's names (band name + aliases for remote sensing; RGB / grey by count otherwise)."""
    given = as_name_list(target_bands)
    if given is not None:
        return [[g] for g in given]
    prep = domain.preprocessing(cfg, None) if hasattr(domain, "preprocessing") else {}
    sensors = (prep or {}).get("sensors")
    if sensors:
        bands = next(iter(sensors.values()))["bands"]
        return [[b["name"], *b.get("aliases", [])] for b in bands]
    n = enc_kwargs.get("in_chans") or 3
    if n == 3:
        return [["red"], ["green"], ["blue"]]
    if n == 1:
        return [["grey"]]
    return [[f"channel{i}"] for i in range(n)]


def map_channels(kernel: torch.Tensor, source: list[str], target: list[list[str]]) -> tuple[torch.Tensor, list[dict]]:
    """Patch kernel ``E x Cs x ...`` -> ``E x Ct x ...`` by channel name, and one decision per target channel.

    Example:
        >>> w = torch.randn(4, 3, 2, 2)
        >>> new, how = map_channels(w, ["red", "green", "blue"], [["B04", "red"], ["B08", "nir"]])
        >>> torch.equal(new[:, 0], w[:, 0]), [d["rule"] for d in how]
        (True, ['copied', 'mean of source kernels'])
    """
    src = [channel_name_set(s) for s in source]
    cs, ct = kernel.shape[1], len(target)
    out = torch.empty(kernel.shape[0], ct, *kernel.shape[2:], dtype=kernel.dtype)
    decisions: list[dict] = []
    unmatched = []
    for i, names in enumerate(target):
        tn = channel_name_set(names)
        j = next((j for j, s in enumerate(src) if s & tn), None)
        if j is not None:
            out[:, i] = kernel[:, j]
            decisions.append({"target": names[0], "rule": "copied", "from": [source[j]]})
        elif "grey" in tn and all(any(c in s for s in src) for c in ("red", "green", "blue")):
            idx = [next(j for j, s in enumerate(src) if c in s) for c in ("red", "green", "blue")]
            out[:, i] = kernel[:, idx].sum(1)
            decisions.append({"target": names[0], "rule": "sum of red+green+blue", "from": [source[j] for j in idx]})
        else:
            unmatched.append(i)
    if unmatched and len(unmatched) == ct:  # nothing matched: timm adapt_input_conv
        for i in unmatched:
            if ct == 1:
                out[:, i] = kernel.sum(1)
                decisions.append(
                    {
                        "target": target[i][0],
                        "rule": "sum of source kernels (timm adapt_input_conv)",
                        "from": list(source),
                    }
                )
            else:
                out[:, i] = kernel[:, i % cs] * (cs / ct)
                decisions.append(
                    {
                        "target": target[i][0],
                        "rule": f"cycled x {cs}/{ct} (timm adapt_input_conv)",
                        "from": [source[i % cs]],
                    }
                )
    else:
        for i in unmatched:
            out[:, i] = kernel.mean(1)
            decisions.append({"target": target[i][0], "rule": "mean of source kernels", "from": list(source)})
    decisions.sort(key=lambda d: [t[0] for t in target].index(d["target"]))
    return out, decisions
