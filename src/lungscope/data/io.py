"""Read one chest X-ray file of any supported format into a 2-D float32 array in [0, 1].

Formats are recognised by content, not by suffix: JPEG, PNG, TIFF, WebP, BMP (via Pillow) and DICOM Part-10
files (via pydicom). Every failure raises :class:`~lungscope.errors.ImageReadError` naming the file and the
reason (missing, empty, truncated, not an image, no pixel data, too large, unsupported, corrupt).

How values become [0, 1] (bright = dense, as MONOCHROME2):

* 8-bit and colour modes (L, 1, P, RGB, RGBA, LA, CMYK, ...): Pillow's ``convert("L")`` luminance
  (ITU-R BT.601) divided by 255. Alpha and palette transparency are *dropped*, not composited: an
  X-ray's grey values mean density, and blending them with a made-up background would change them.
  Pillow decodes 16-bit *colour* PNG/TIFF to 8 bits per channel; 16-bit grey keeps its precision.
* 16-bit grey (``I;16``): divided by 65535, so an 8-bit image saved as 16 bits (values * 257) reads
  identically. A 16-bit PNG whose ``sBIT`` chunk declares fewer significant bits (say 12) and whose
  values all fit those bits is divided by 2**12 - 1 instead; if its values exceed them, they were
  scaled to 16 bits as the PNG spec asks, and 65535 is used. 12-bit data in 16 bits *without* sBIT
  uses the full 16-bit range (it reads dark): the file gives no reliable way to tell.
* 32-bit integer or float (``I``, ``F``): stretched from the image's own minimum to maximum.
* DICOM grey: the Modality LUT or RescaleSlope/Intercept, then the first VOI LUT (preferred) or the
  first WindowCenter/Width, mapped from that transform's output range to [0, 1]; without a VOI the
  range of possible stored values (BitsStored, PixelRepresentation, after rescale) maps to [0, 1].
  MONOCHROME1 is then inverted. Colour DICOM (3 samples): BT.601 luminance over 2**BitsStored - 1.
  Multi-frame DICOM and multi-page TIFF: only the first frame is read (``meta["frames"]`` says so).

EXIF orientation is applied; :class:`ImageInfo` width and height are those of the upright image, so
``read_image(p).pixels.shape == (info.height, info.width)`` (a PNG's eXIf chunk placed after the pixel
data is only seen by ``read_image``, not by ``read_header``).

Size limit: ``max_pixels`` is checked from the header before any decoding (for DICOM, Rows * Columns *
frames). Pillow's own hard limit, 2 * ``PIL.Image.MAX_IMAGE_PIXELS`` (about 179 million), also applies
and is reported as "too large"; its warning is silenced, since ``max_pixels`` replaces it.
"""

from __future__ import annotations

import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import pydicom
from PIL import ExifTags, Image, ImageOps
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, pixel_array

from lungscope.errors import ImageReadError

MAX_PIXELS: int = 100_000_000
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".dcm", ".dicom"}
)

_FORMAT_NAMES = "JPEG, PNG, TIFF, WebP, BMP or DICOM"
_HEAD_BYTES = 132  # enough for every signature below, DICOM's "DICM" at offset 128 included
_DEFER_BYTES = 64 * 1024  # a DICOM header read leaves larger values (the pixel data above all) on disk
_SWAPS_AXES = frozenset({5, 6, 7, 8})  # EXIF orientations that exchange width and height
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, the weights of Pillow's convert("L")
_UNDEFINED_LENGTH = 0xFFFFFFFF  # DICOM: the value (encapsulated pixel data) runs to a delimiter
_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
_DICOM_META = ("PatientID", "Modality", "ViewPosition", "BodyPartExamined")
_WARNINGS_LOCK = threading.Lock()
# What Pillow's and pydicom's messages say when a file is cut short, or needs a codec we lack.
_TRUNCATED_WORDS = ("truncated", "end of file", "less than expected")
_UNSUPPORTED_WORDS = ("not supported", "missing dependencies")


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says, without decoding pixels (width/height of the upright image)."""

    path: str
    format: str  # "JPEG", "PNG", "TIFF", "WEBP", "BMP" or "DICOM"
    width: int
    height: int
    mode: str  # Pillow mode ("L", "RGB", "I;16", ...) or DICOM PhotometricInterpretation
    bit_depth: int  # significant bits per sample (8, 16, 12 for a 12-bit DICOM or PNG with sBIT 12...)


@dataclass(frozen=True)
class XRay:
    """A decoded radiograph: 2-D float32 in [0, 1], bright = dense, orientation applied."""

    pixels: np.ndarray
    info: ImageInfo
    meta: dict[str, object]


def sniff_format(path: str | PathLike[str]) -> str | None:
    """Return the format named by the file's magic bytes, or None if unknown or unreadable."""
    try:
        with open(path, "rb") as f:
            return _format_of(f.read(_HEAD_BYTES))
    except OSError:
        return None


def is_image_candidate(path: str | PathLike[str]) -> bool:
    """True for a supported suffix, or for a DICOM file (by content) with no suffix or a UID-like name."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    # DICOM files often have no suffix, or are named by a UID such as "1.2.840.113619.2.55.7" (suffix ".7").
    return (not suffix or suffix[1:].isdigit()) and sniff_format(path) == "DICOM"


def read_header(path: str | PathLike[str], *, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Read only the header: format, upright size, mode, bit depth. Raises ImageReadError."""
    path = Path(path)
    fmt = _identify(path)
    if fmt == "DICOM":
        return _dicom_header(path, max_pixels)[1]
    with _open_raster(path, fmt, max_pixels) as im:
        return _raster_info(path, fmt, im, _orientation(im, fmt))


def read_image(path: str | PathLike[str], *, max_pixels: int = MAX_PIXELS) -> XRay:
    """Decode a whole image to 2-D float32 in [0, 1] (see the module docstring). Raises ImageReadError."""
    path = Path(path)
    fmt = _identify(path)
    if fmt == "DICOM":
        return _read_dicom(path, max_pixels)
    with _open_raster(path, fmt, max_pixels) as im:
        im.load()
        orientation = _orientation(im, fmt)
        info = _raster_info(path, fmt, im, orientation)
        pixels, meta = _raster_pixels(ImageOps.exif_transpose(im) if orientation != 1 else im, info.bit_depth)
        if orientation != 1:
            meta["exif_orientation"] = orientation
        if (frames := getattr(im, "n_frames", 1)) > 1:
            meta["frames"] = f"first of {frames} used"
    return XRay(pixels=_unit_float32(pixels), info=info, meta=meta)


def verify_image(path: str | PathLike[str], *, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Detect a truncated or corrupt file as cheaply as the format allows; return its header.

    JPEG is decoded at 1/8 scale (every byte is still read and entropy-decoded), PNG chunk CRCs are
    checked up to IEND without inflating the pixels, DICOM decodes its first frame, others load fully.
    """
    path = Path(path)
    fmt = _identify(path)
    if fmt == "DICOM":
        info = _dicom_header(path, max_pixels)[1]
        with _decoding(path):
            pixel_array(path, index=0)
        return info
    with _open_raster(path, fmt, max_pixels) as im:
        info = _raster_info(path, fmt, im, _orientation(im, fmt))
        if fmt == "PNG":
            im.verify()
        else:
            if fmt == "JPEG":
                im.draft("L", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    return info


# --- identification and errors ---------------------------------------------------------------


def _format_of(head: bytes) -> str | None:
    # Hand-written: Pillow identifies a file only by trying its plugins one by one, and knows no DICOM.
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM":
        return "BMP"
    if head[128:132] == b"DICM":
        return "DICOM"
    return None


def _identify(path: Path) -> str:
    """Check that the file exists, is readable and not empty; return its format by content."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(_HEAD_BYTES)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "not an image: it is a directory") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc.strerror or exc}") from exc
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    fmt = _format_of(head)
    if fmt is None:
        raise ImageReadError(path, f"not an image: the content is not {_FORMAT_NAMES}")
    return fmt


@contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Turn whatever a decoder raises on a bad file into an ImageReadError naming the file."""
    try:
        yield
    except (ImageReadError, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"too large: {exc}") from exc
    except Exception as exc:  # Pillow and pydicom raise OSError, SyntaxError, ValueError, struct.error...
        raise ImageReadError(path, _failure(exc)) from exc


def _failure(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, NotImplementedError) or any(words in lowered for words in _UNSUPPORTED_WORDS):
        return f"unsupported: {text}"
    if isinstance(exc, EOFError) or any(words in lowered for words in _TRUNCATED_WORDS):
        return f"truncated: {text}"
    return f"corrupt or unreadable: {text}"


@contextmanager
def _warnings_filtered(action: str, **which: object) -> Iterator[None]:
    """One warnings filter for this block. The lock stops threads (the audit uses them) from restoring
    each other's filters out of order, which ``catch_warnings`` alone allows, leaking a filter for good."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings(action, **which)
        yield


def _check_size(path: Path, pixels: int, shape: str, max_pixels: int) -> None:
    if pixels > max_pixels:
        raise ImageReadError(path, f"too large: {shape} is {pixels:,} pixels, over the limit of {max_pixels:,}")


def _unit_float32(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(values, 0.0, 1.0), dtype=np.float32)


# --- Pillow formats --------------------------------------------------------------------------


@contextmanager
def _open_raster(path: Path, fmt: str, max_pixels: int) -> Iterator[Image.Image]:
    """Open lazily (header only) and refuse an oversized image; errors in the block become ImageReadError."""
    with _decoding(path):
        # max_pixels replaces Pillow's warning; its hard limit (2 * Image.MAX_IMAGE_PIXELS) still
        # raises DecompressionBombError, which _decoding reports as "too large".
        with _warnings_filtered("ignore", category=Image.DecompressionBombWarning):
            im = Image.open(path, formats=[fmt])
        with im:
            _check_size(path, im.width * im.height, f"{im.width}x{im.height}", max_pixels)
            yield im


def _orientation(im: Image.Image, fmt: str) -> int:
    """The EXIF orientation (1 = upright) known from the header."""
    if fmt == "PNG" and "exif" not in im.info:
        return 1  # asking Pillow would decode the image to look for an eXIf chunk after the pixels
    value = im.getexif().get(ExifTags.Base.Orientation, 1)
    return value if value in range(1, 9) else 1


def _raster_info(path: Path, fmt: str, im: Image.Image, orientation: int) -> ImageInfo:
    width, height = (im.height, im.width) if orientation in _SWAPS_AXES else im.size
    if im.mode.startswith("I;16"):
        bits = (_png_sbit(path) if fmt == "PNG" else None) or 16
    else:
        bits = {"1": 1, "I": 32, "F": 32}.get(im.mode, 8)
    return ImageInfo(str(path), fmt, width, height, im.mode, bits)


def _png_sbit(path: Path) -> int | None:
    """Significant bits of the grey sample from a PNG's sBIT chunk, which Pillow does not read."""
    with path.open("rb") as f:
        f.seek(8)  # the signature
        while len(chunk := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", chunk)
            if kind == b"sBIT":
                bits = f.read(1)
                return bits[0] if bits and 0 < bits[0] < 16 else None
            if kind == b"IDAT":
                return None
            f.seek(length + 4, 1)  # chunk data and CRC
    return None


def _raster_pixels(im: Image.Image, bit_depth: int) -> tuple[np.ndarray, dict[str, object]]:
    """Grey values in [0, 1] by mode, as the module docstring describes."""
    if im.mode.startswith("I;16"):
        values = np.asarray(im).astype(np.float32)
        top = 2**bit_depth - 1
        if values.max() > top:  # sBIT was declared but the values were scaled to 16 bits
            top = 2**16 - 1
        return values / top, {"value_range": (0, top)}
    if im.mode in ("I", "F"):
        values = np.asarray(im).astype(np.float64)
        low, high = float(values.min()), float(values.max())
        return (values - low) / ((high - low) or 1.0), {"value_range": (low, high)}
    meta: dict[str, object] = {"alpha": "dropped"} if "A" in im.mode or "transparency" in im.info else {}
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0, meta


# --- DICOM -----------------------------------------------------------------------------------


def _dicom_header(path: Path, max_pixels: int) -> tuple[Dataset, ImageInfo]:
    """Read a DICOM file but its large values (pixel data above all), and check it (see _dicom_info)."""
    with _decoding(path):
        # pydicom only warns when the file ends inside an element (and drops it): make that an error.
        with _warnings_filtered("error", message="End of file reached", category=UserWarning):
            ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
        return ds, _dicom_info(path, ds, max_pixels)


def _dicom_info(path: Path, ds: Dataset, max_pixels: int) -> ImageInfo:
    """Check a DICOM header (pixel data present, size, photometric interpretation) and describe it."""
    if "PixelData" not in ds:
        raise ImageReadError(path, "no pixel data: the DICOM file has no (7FE0,0010) Pixel Data element")
    # A raw (deferred) element gives its position and declared length without reading the value; an element that
    # pydicom has already converted has no length (its value was read whole), so only raw ones are checked here.
    pixel_data = ds.get_item("PixelData")
    length = getattr(pixel_data, "length", None)
    if length is not None and length != _UNDEFINED_LENGTH and (
        missing := pixel_data.value_tell + length - path.stat().st_size
    ) > 0:
        raise ImageReadError(path, f"truncated: the pixel data ends {missing:,} bytes after the end of the file")
    rows, columns, frames = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0), _frames(ds)
    if not rows or not columns:
        raise ImageReadError(path, "corrupt or unreadable: DICOM without Rows/Columns")
    _check_size(path, rows * columns * frames, f"{columns}x{rows}x{frames} frames", max_pixels)
    photometric, samples = str(ds.get("PhotometricInterpretation", "")), ds.get("SamplesPerPixel", 1)
    grey, colour = photometric in _MONOCHROME and samples == 1, photometric not in _MONOCHROME and samples == 3
    if not (grey or colour):
        raise ImageReadError(
            path, f"unsupported: DICOM PhotometricInterpretation {photometric!r} with {samples} samples per pixel"
        )
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    return ImageInfo(str(path), "DICOM", columns, rows, photometric, bits)


def _read_dicom(path: Path, max_pixels: int) -> XRay:
    ds, info = _dicom_header(path, max_pixels)
    with _decoding(path):
        meta: dict[str, object] = {key: str(ds.get(key)) for key in _DICOM_META if key in ds}
        if (frames := _frames(ds)) > 1:
            meta["frames"] = f"first of {frames} used"
        if "RescaleSlope" in ds or "RescaleIntercept" in ds:
            meta["rescale"] = (float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0)))
        frame = pixel_array(path, index=0)  # reads only the first frame from disk
        if info.mode in _MONOCHROME:
            pixels = _dicom_grey(frame, ds, meta)
        else:  # three samples; pydicom has already turned YBR into RGB
            pixels = frame @ _LUMA / (2**info.bit_depth - 1)
    return XRay(pixels=_unit_float32(pixels), info=info, meta=meta)


def _dicom_grey(frame: np.ndarray, ds: Dataset, meta: dict[str, object]) -> np.ndarray:
    """Modality LUT/rescale, then VOI LUT or window, mapped to [0, 1]; MONOCHROME1 inverted."""
    values = apply_modality_lut(frame, ds)
    if luts := ds.get("VOILUTSequence"):
        entries, first = int(luts[0].LUTDescriptor[0]) or 2**16, int(luts[0].LUTDescriptor[1])
        table = apply_voi(np.arange(first, first + entries), ds)
        # The table's own range, not its nominal bit depth: vendors often declare 16 bits for 12-bit data.
        low, high = float(table.min()), float(table.max())
        values = apply_voi(np.clip(np.rint(values), first, first + entries - 1).astype(np.int64), ds)
        meta["voi"] = "VOI LUT"
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)  # the window's output range
        values = apply_windowing(values, ds)
        meta["voi"] = "window"
        meta["window"] = (float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth)))
    else:
        low, high = sorted(apply_modality_lut(np.array(_stored_range(ds)), ds))
        meta["voi"] = "none: full stored range"
    unit = (values - low) / ((high - low) or 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        meta["inverted"] = "MONOCHROME1 to MONOCHROME2"
        return 1.0 - unit
    return unit


def _frames(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames") or 1)


def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    if ds.get("PixelRepresentation") == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _first(value: object) -> object:
    """The first of a multi-valued DICOM element (pydicom applies the first window too)."""
    return value[0] if isinstance(value, MultiValue) else value
