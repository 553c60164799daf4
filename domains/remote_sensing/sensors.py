"""Sensor table: band names, central wavelengths (µm) and ground sampling distance (m).

Built-in sensors: ``sentinel2_l1c``, ``sentinel2_l2a`` (alias ``sentinel2``), ``landsat8``,
``landsat9`` (OLI + TIRS, alias ``landsat``), ``sentinel1`` (VV, VH), ``naip`` (R, G, B, N).
User sensors come from YAML (``sensors_file`` option)::

    sensors:
      planetscope:
        gsd: 3.0
        bands:
          - {name: blue,  wavelength: 0.490, aliases: [B1]}
          - {name: green, wavelength: 0.565}
          - {name: red,   wavelength: 0.665}
          - {name: nir,   wavelength: 0.865, scale: 0.0001}

Band names match case-insensitively, and through each band's aliases (``B2`` for ``B02``, ``red``...).

Example:
    >>> s = get_sensor("sentinel2")
    >>> [b.name for b in s.select(["B02", "b8"])]
    ['B02', 'B08']
    >>> s.band("B04").wavelength
    0.665
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from domainfm.errors import ConfigError, did_you_mean, unknown_choice


@dataclass(frozen=True)
class Band:
    """One spectral band (or SAR polarisation).

    ``wavelength`` is the physical central wavelength in µm; ``embed_wavelength`` the value fed to
    the wavelength-conditioned patch embed (defaults to ``wavelength``; SAR polarisations share
    one physical wavelength, so they get distinct embedding values). ``scale``/``offset`` convert
    stored digital numbers when the file itself carries no scale/offset.
    """

    name: str
    wavelength: float
    gsd: float
    aliases: tuple[str, ...] = ()
    embed_wavelength: float | None = None
    scale: float | None = None
    offset: float | None = None

    @property
    def model_wavelength(self) -> float:
        """The wavelength (µm) the encoder sees for this band."""
        return float(self.embed_wavelength if self.embed_wavelength is not None else self.wavelength)

    def keys(self) -> set[str]:
        """Lower-case names this band answers to."""
        return {_norm(n) for n in (self.name, *self.aliases)}


@dataclass(frozen=True)
class Sensor:
    """A sensor: its name, bands (in the order they are stored in a full multi-band product)."""

    name: str
    bands: tuple[Band, ...]
    description: str = ""
    aliases: tuple[str, ...] = field(default=())

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    def band(self, name: str) -> Band:
        """The band called ``name`` (or one of its aliases); :class:`ConfigError` if unknown."""
        key = _norm(name)
        for b in self.bands:
            if key in b.keys():
                return b
        raise ConfigError(
            f"unknown band {name!r} for sensor {self.name!r}{did_you_mean(name, self.band_names)}; "
            f"its bands are: {', '.join(self.band_names)}"
        )

    def index(self, name: str) -> int:
        """0-based position of band ``name`` in the sensor's full band order."""
        return self.bands.index(self.band(name))

    def select(self, names: Iterable[str] | str | None) -> list[Band]:
        """Bands for ``names`` (a list or ``"B02,B03"``); all bands when ``None``/empty."""
        names = parse_band_list(names)
        if not names:
            return list(self.bands)
        out = [self.band(n) for n in names]
        dupes = sorted({b.name for b in out if out.count(b) > 1})
        if dupes:
            raise ConfigError(f"band(s) {', '.join(dupes)} requested twice for sensor {self.name!r}")
        return out


def _norm(name: str) -> str:
    return str(name).strip().lower().replace(" ", "").replace("-", "").replace("_", "")


def parse_band_list(names) -> list[str]:
    """``"B02,B03"`` / ``["B02", "B03"]`` / ``None`` -> a list of names."""
    if names is None:
        return []
    if isinstance(names, str):
        return [n.strip() for n in re.split(r"[,;\s]+", names) if n.strip()]
    return [str(n).strip() for n in names if str(n).strip()]


def _b(name, wl, gsd, *aliases, **kw) -> Band:
    return Band(name=name, wavelength=wl, gsd=gsd, aliases=tuple(aliases), **kw)


def _s2(l1c: bool) -> tuple[Band, ...]:
    bands = [
        _b("B01", 0.443, 60, "B1", "coastal", "coastal_aerosol"),
        _b("B02", 0.490, 10, "B2", "blue"),
        _b("B03", 0.560, 10, "B3", "green"),
        _b("B04", 0.665, 10, "B4", "red"),
        _b("B05", 0.705, 20, "B5", "rededge1", "red_edge_1"),
        _b("B06", 0.740, 20, "B6", "rededge2", "red_edge_2"),
        _b("B07", 0.783, 20, "B7", "rededge3", "red_edge_3"),
        _b("B08", 0.842, 10, "B8", "nir"),
        _b("B8A", 0.865, 20, "B8a", "nir08", "nir_narrow", "rededge4"),
        _b("B09", 0.945, 60, "B9", "watervapor", "water_vapour"),
    ]
    if l1c:
        bands.append(_b("B10", 1.375, 60, "cirrus"))
    bands += [_b("B11", 1.610, 20, "swir16", "swir1"), _b("B12", 2.190, 20, "swir22", "swir2")]
    return tuple(bands)


def _landsat() -> tuple[Band, ...]:
    return (
        _b("B1", 0.443, 30, "B01", "SR_B1", "coastal"),
        _b("B2", 0.482, 30, "B02", "SR_B2", "blue"),
        _b("B3", 0.561, 30, "B03", "SR_B3", "green"),
        _b("B4", 0.655, 30, "B04", "SR_B4", "red"),
        _b("B5", 0.865, 30, "B05", "SR_B5", "nir", "nir08"),
        _b("B6", 1.609, 30, "B06", "SR_B6", "swir1", "swir16"),
        _b("B7", 2.201, 30, "B07", "SR_B7", "swir2", "swir22"),
        _b("B8", 0.590, 15, "B08", "pan"),
        _b("B9", 1.373, 30, "B09", "cirrus"),
        _b("B10", 10.895, 100, "ST_B10", "tirs1", "lwir11"),
        _b("B11", 12.005, 100, "tirs2", "lwir12"),
    )


# C-band SAR: 5.405 GHz -> 55 465 µm. VV and VH share it physically; the encoder is given distinct
# values (a wavelength embed cannot tell two equal wavelengths apart).
_C_BAND_UM = 299_792_458 / 5.405e9 * 1e6

BUILTIN_SENSORS: dict[str, Sensor] = {
    "sentinel2_l1c": Sensor("sentinel2_l1c", _s2(True), "Sentinel-2 MSI Level-1C (13 bands, TOA)"),
    "sentinel2_l2a": Sensor(
        "sentinel2_l2a", _s2(False), "Sentinel-2 MSI Level-2A (12 bands, BOA)", aliases=("sentinel2", "s2")
    ),
    "landsat8": Sensor("landsat8", _landsat(), "Landsat 8 OLI/TIRS", aliases=("landsat", "l8")),
    "landsat9": Sensor("landsat9", _landsat(), "Landsat 9 OLI-2/TIRS-2", aliases=("l9",)),
    "sentinel1": Sensor(
        "sentinel1",
        (
            _b("VV", _C_BAND_UM, 10, "vv", embed_wavelength=_C_BAND_UM),
            _b("VH", _C_BAND_UM, 10, "vh", embed_wavelength=2 * _C_BAND_UM),
        ),
        "Sentinel-1 C-band SAR GRD (VV, VH)",
        aliases=("s1",),
    ),
    "naip": Sensor(
        "naip",
        (
            _b("R", 0.635, 0.6, "red", "B1"),
            _b("G", 0.555, 0.6, "green", "B2"),
            _b("B", 0.465, 0.6, "blue", "B3"),
            _b("N", 0.845, 0.6, "nir", "B4"),
        ),
        "NAIP aerial imagery (R, G, B, NIR)",
    ),
    "rgb": Sensor(
        "rgb",
        (
            _b("R", 0.665, 1.0, "red"),
            _b("G", 0.560, 1.0, "green"),
            _b("B", 0.490, 1.0, "blue"),
        ),
        "generic RGB camera",
    ),
}


def _parse_band(entry, sensor: str, default_gsd, source: str) -> Band:
    if not isinstance(entry, dict) or "name" not in entry or "wavelength" not in entry:
        raise ConfigError(
            f"{source}: sensor {sensor!r}: each band needs at least name and wavelength (µm), got {entry!r}"
        )
    unknown = set(entry) - {"name", "wavelength", "gsd", "aliases", "embed_wavelength", "scale", "offset"}
    if unknown:
        raise ConfigError(f"{source}: sensor {sensor!r} band {entry['name']!r}: unknown key {sorted(unknown)[0]}")
    try:
        wl = float(entry["wavelength"])
        gsd = float(entry.get("gsd", default_gsd if default_gsd is not None else 0.0))
        emb = entry.get("embed_wavelength")
        emb = None if emb is None else float(emb)
        scale = None if entry.get("scale") is None else float(entry["scale"])
        offset = None if entry.get("offset") is None else float(entry["offset"])
    except (TypeError, ValueError):
        raise ConfigError(
            f"{source}: sensor {sensor!r} band {entry['name']!r}: wavelength/gsd/scale/offset must be numbers"
        ) from None
    if wl <= 0 or (emb is not None and emb <= 0):
        raise ConfigError(f"{source}: sensor {sensor!r} band {entry['name']!r}: wavelength must be > 0 µm")
    aliases = entry.get("aliases") or []
    if isinstance(aliases, str):
        aliases = [aliases]
    return Band(str(entry["name"]), wl, gsd, tuple(str(a) for a in aliases), emb, scale, offset)


def load_sensors_file(path: str | Path) -> dict[str, Sensor]:
    """Read user sensors from a YAML file (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sensors file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    table = raw.get("sensors", raw) if isinstance(raw, dict) else None
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{path}: expected a mapping 'sensors: {{name: {{bands: [...]}}}}'")
    out = {}
    for name, spec in table.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("bands"), list) or not spec["bands"]:
            raise ConfigError(f"{path}: sensor {name!r} needs a non-empty list 'bands'")
        bands = tuple(_parse_band(b, name, spec.get("gsd"), str(path)) for b in spec["bands"])
        names = [_norm(b.name) for b in bands]
        if len(set(names)) != len(names):
            raise ConfigError(f"{path}: sensor {name!r} has duplicate band names")
        aliases = spec.get("aliases") or []
        out[str(name)] = Sensor(
            str(name),
            bands,
            str(spec.get("description", "")),
            tuple([aliases] if isinstance(aliases, str) else aliases),
        )
    return out


def sensor_table(sensors_file: str | Path | None = None) -> dict[str, Sensor]:
    """Built-in sensors plus those of ``sensors_file`` (user sensors win on a name clash)."""
    table = dict(BUILTIN_SENSORS)
    if sensors_file:
        table.update(load_sensors_file(sensors_file))
    return table


def get_sensor(name: str | Sensor, sensors_file: str | Path | None = None) -> Sensor:
    """Look a sensor up by name or alias (case-insensitive).

    Example:
        >>> get_sensor("S2").name
        'sentinel2_l2a'
    """
    if isinstance(name, Sensor):
        return name
    table = sensor_table(sensors_file)
    key = _norm(name)
    for sensor in table.values():
        if key == _norm(sensor.name) or key in {_norm(a) for a in sensor.aliases}:
            return sensor
    raise ConfigError(
        unknown_choice("sensor", name, table, "known sensors")
        + ("" if sensors_file else " (add your own with sensors_file: my_sensors.yaml)")
    )


def sensor_from_dict(d: dict) -> Sensor:
    """Rebuild a sensor from :func:`sensor_to_dict` output (used by checkpoint cards)."""
    bands = tuple(
        Band(
            b["name"],
            float(b["wavelength"]),
            float(b.get("gsd", 0.0)),
            tuple(b.get("aliases", ())),
            b.get("embed_wavelength"),
            b.get("scale"),
            b.get("offset"),
        )
        for b in d["bands"]
    )
    return Sensor(d["name"], bands, d.get("description", ""), tuple(d.get("aliases", ())))


def sensor_to_dict(sensor: Sensor, bands: list[Band] | None = None) -> dict:
    """JSON-friendly description of a sensor (optionally restricted to ``bands``)."""
    return {
        "name": sensor.name,
        "description": sensor.description,
        "aliases": list(sensor.aliases),
        "bands": [
            {
                "name": b.name,
                "wavelength": b.wavelength,
                "gsd": b.gsd,
                "aliases": list(b.aliases),
                "embed_wavelength": b.embed_wavelength,
                "scale": b.scale,
                "offset": b.offset,
            }
            for b in (bands if bands is not None else sensor.bands)
        ],
    }


def card_sensor(pre: dict, sensor: str | None):
    """(Sensor, band names) from a card's preprocessing record."""
    sensors = pre["sensors"]
    if sensor is None:
        name = next(iter(sensors))
    else:
        name = next(
            (
                k
                for k, v in sensors.items()
                if k.lower() == sensor.lower() or sensor.lower() in [a.lower() for a in v.get("aliases", [])]
            ),
            None,
        )
        if name is None:
            try:
                name = get_sensor(sensor).name
            except ConfigError:
                name = None
        if name not in sensors:
            raise ConfigError(f"sensor {sensor!r} is not among the model's sensors: {', '.join(sensors)}")
    s = sensor_from_dict(sensors[name])
    return s, pre["bands"][name]
