"""Opening whole-slide images and reading their microns-per-pixel (MPP).

Slides are read with OpenSlide (SVS, NDPI, MRXS, SCN, BIF, generic tiled TIFF, DICOM...). A file that
OpenSlide refuses but Pillow can decode (a plain, non-pyramidal TIFF or PNG) falls back to
``openslide.ImageSlide`` (same API, one level, read fully into memory), with a warning saying so.
Anything else is a one-line :class:`~domainfm.errors.DataError` naming the file.

Example:
    >>> import tempfile
    >>> from domainfm.pathology.synthetic import write_synthetic_slide
    >>> path = write_synthetic_slide(Path(tempfile.mkdtemp()) / "slide.tif", (256, 256), mpp=0.25)
    >>> slide = open_slide(path)
    >>> slide_mpp(slide, path, override=None)
    0.25
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import openslide
import tifffile
from PIL import Image

from domainfm.errors import DataError

#: File suffixes treated as slides when a folder is listed.
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")

#: Plausible microns-per-pixel range; anything outside is treated as "no MPP" (e.g. 72-dpi defaults).
MPP_RANGE = (0.05, 50.0)

#: Pixel count above which a non-pyramidal image is refused rather than loaded whole.
MAX_PLAIN_PIXELS = 400_000_000

MPP_HINT = (
    "give the scan resolution (µm/px, e.g. 0.25 for 40x, 0.5 for 20x): pass mpp=VALUE (data.options.mpp when "
    "training) or an `mpp` column in the manifest CSV"
)


def open_slide(path: str | Path, allow_fallback: bool = True):
    """Open ``path`` with OpenSlide, falling back to ``openslide.ImageSlide`` for plain images.

    Returns an object with the OpenSlide API (``level_dimensions``, ``level_downsamples``,
    ``read_region``, ``get_thumbnail``, ``get_best_level_for_downsample``, ``properties``).

    Raises:
        DataError: the file is missing, or neither OpenSlide nor Pillow can read it (the message
            says why), or it is a plain image too large to load without a pyramid.

    Example:
        >>> import tempfile
        >>> from domainfm.pathology.synthetic import write_synthetic_slide
        >>> folder = Path(tempfile.mkdtemp())
        >>> s = open_slide(write_synthetic_slide(folder / "s.tif", (512, 512), mpp=0.5, tile=128))
        >>> s.level_count, s.dimensions                  # a pyramid: level 1 is half of level 0
        (..., (512, 512))
        >>> _ = (folder / "broken.svs").write_bytes(b"not a slide")
        >>> open_slide(folder / "broken.svs")
        Traceback (most recent call last):
        domainfm.errors.DataError: ...broken.svs...
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "slide file does not exist")
    if path.is_dir():
        raise DataError(path, "is a folder, not a slide file")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        reason = "OpenSlide does not recognise it as a whole-slide image"
    except openslide.OpenSlideError as exc:
        raise DataError(
            path, f"OpenSlide cannot read this slide ({_first_line(exc)}); the file may be truncated or corrupt"
        ) from None
    if not allow_fallback:
        raise DataError(path, f"unreadable slide: {reason}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own warnings about odd TIFF tags
            with Image.open(path) as im:
                w, h = im.size
    except Exception:
        raise DataError(
            path, f"unreadable slide: {reason} and Pillow cannot decode it either (corrupt file or unsupported format)"
        ) from None
    if w * h > MAX_PLAIN_PIXELS:
        raise DataError(
            path,
            f"{reason}, and at {w}x{h} pixels this plain (non-pyramidal) image is too "
            "large to load whole; convert it to a tiled pyramid, e.g. "
            "`vips tiffsave in.tif out.tif --tile --pyramid --compression jpeg`",
        )
    warnings.warn(
        f"{path}: {reason} (plain, non-pyramidal image); reading it whole with Pillow "
        "(openslide.ImageSlide), one level only",
        stacklevel=2,
    )
    try:
        slide = openslide.ImageSlide(str(path))
        slide._domainfm_plain = True
        return slide
    except Exception as exc:
        raise DataError(path, f"unreadable slide: {reason} and Pillow fails on it ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not np.isfinite(mpp) or not (MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
        return None
    return float(mpp)


def _mpp_from_resolution(xres: float | None, unit: str | None) -> float | None:
    """MPP from a TIFF XResolution (pixels per unit) and ResolutionUnit (``centimeter``/``inch``)."""
    if not xres or unit is None:
        return None
    unit = str(unit).lower()
    per_unit_um = {"centimeter": 1e4, "cm": 1e4, "3": 1e4, "inch": 25400.0, "2": 25400.0}.get(unit)
    if per_unit_um is None:
        return None
    return _plausible(per_unit_um / float(xres))


def mpp_from_properties(props) -> float | None:
    """Microns per pixel (x) from OpenSlide properties, or ``None``.

    Looks at ``openslide.mpp-x`` (which OpenSlide fills from vendor metadata), then vendor keys
    (``aperio.MPP``, ``hamamatsu.XResolution``...), then the TIFF resolution tags.

    Example:
        >>> mpp_from_properties({"openslide.mpp-x": "0.2527"})
        0.2527
        >>> mpp_from_properties({"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"})
        0.25
    """
    props = dict(props)
    for key in (
        "openslide.mpp-x",
        "aperio.MPP",
        "philips.DICOM_PIXEL_SPACING",
        "mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X",
    ):
        raw = props.get(key)
        if raw is None:
            continue
        try:
            value = float(str(raw).strip('"').split()[0])
        except (ValueError, IndexError):
            continue
        if key == "philips.DICOM_PIXEL_SPACING":  # millimetres
            value *= 1000.0
        if _plausible(value):
            return _plausible(value)
    try:
        xres = float(props["tiff.XResolution"]) if "tiff.XResolution" in props else None
    except ValueError:
        xres = None
    return _mpp_from_resolution(xres, props.get("tiff.ResolutionUnit"))


def _mpp_from_tiff_tags(path: Path) -> float | None:
    """MPP from the first page's resolution tags of a (plain) TIFF, read with tifffile."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            xres = page.tags.get("XResolution")
            unit = page.tags.get("ResolutionUnit")
            if xres is None or unit is None:
                return None
            num, den = xres.value
            return _mpp_from_resolution(num / den if den else None, {2: "inch", 3: "centimeter"}.get(int(unit.value)))
    except Exception:
        return None


def slide_mpp(slide, path: str | Path, override: float | None = None, require: bool = False) -> float | None:
    """The slide's level-0 microns per pixel: ``override`` if given, else read from the file; ``None`` when
    the file carries none (``require=True``: a one-line error instead).

    Raises:
        DataError: an implausible override, or (``require``) no MPP in the file and no override; the message
            says to pass ``mpp=``.

    Example:
        >>> slide_mpp(None, "x.svs", override=0.5)
        0.5
    """
    if override is not None:
        if not (MPP_RANGE[0] <= float(override) <= MPP_RANGE[1]):
            raise DataError(path, f"mpp override {override} is outside the plausible range {MPP_RANGE} µm/px")
        return float(override)
    mpp = mpp_from_properties(slide.properties) if slide is not None else None
    if mpp is None:
        mpp = _mpp_from_tiff_tags(Path(path))
    if mpp is None and require:
        raise DataError(
            path,
            "no microns-per-pixel in the slide (openslide.mpp-x, aperio.MPP and TIFF "
            f"resolution tags are absent); {MPP_HINT}",
        )
    return mpp


def read_rgb(slide, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
    """``read_region`` composited over white (OpenSlide returns transparent pixels outside the scan)."""
    region = slide.read_region(location, level, size)
    if region.mode == "RGBA" and region.getchannel("A").getextrema()[0] < 255:  # some transparent pixels
        background = Image.new("RGBA", region.size, (255, 255, 255, 255))
        region = Image.alpha_composite(background, region)
    return region.convert("RGB")


def thumbnail_rgb(slide, max_size: int) -> Image.Image:
    """An RGB thumbnail whose longer side is at most ``max_size`` (aspect kept)."""
    thumb = slide.get_thumbnail((max_size, max_size))
    if thumb.mode == "RGBA":
        background = Image.new("RGBA", thumb.size, (255, 255, 255, 255))
        thumb = Image.alpha_composite(background, thumb)
    return thumb.convert("RGB")


class SlideCache:
    """A small LRU of open slide handles, one cache per process (so per DataLoader worker).

    OpenSlide handles are not picklable and must not be shared across forked workers; a dataset
    keeps a ``SlideCache`` that is dropped on pickling and rebuilt lazily in each worker.

    Example:
        >>> cache = SlideCache(max_open=4)
        >>> import tempfile
        >>> from domainfm.pathology.synthetic import write_synthetic_slide
        >>> path = write_synthetic_slide(Path(tempfile.mkdtemp()) / "a.tif", (256, 256))
        >>> cache.get(path) is cache.get(path)      # opened once, then reused
        True
    """

    def __init__(self, max_open: int = 8):
        self.max_open = max(1, int(max_open))
        self._handles: OrderedDict[str, object] = OrderedDict()
        self._pid = os.getpid()

    def get(self, path: str | Path):
        if os.getpid() != self._pid:  # forked: never reuse the parent's handles
            self._handles = OrderedDict()
            self._pid = os.getpid()
        key = str(path)
        slide = self._handles.get(key)
        if slide is not None:
            self._handles.move_to_end(key)
            return slide
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slide = open_slide(key)
        self._handles[key] = slide
        while len(self._handles) > self.max_open:
            _, old = self._handles.popitem(last=False)
            try:
                old.close()
            except Exception:
                pass
        return slide

    def __len__(self) -> int:
        return len(self._handles)

    def close(self) -> None:
        for slide in self._handles.values():
            try:
                slide.close()
            except Exception:
                pass
        self._handles.clear()

    def __getstate__(self):
        return {"max_open": self.max_open}

    def __setstate__(self, state):
        self.__init__(state["max_open"])
