"""Read one chest X-ray file of any supported format into a 2-D float32 array in [0, 1].

Formats are recognised by content, not by suffix: JPEG, PNG, TIFF, WebP, BMP (via Pillow) and DICOM Part-10
files (via pydicom). Every failure raises :class:`~lungscope.errors.ImageReadError` naming the file and the
reason (missing, empty, truncated, not an image, no pixel data, too large, unsupported, corrupt).

How values become [0, 1] (bright = dense, as MONOCHROME2):

* 8-bit and colour modes (L, 1, P, RGB, RGBA, LA, CMYK, ...): Pillow's ``convert("L")`` luminance
  (ITU-R BT.601) divided by 255. Alpha and palette transparency are *dropped*, not composited: an
  X-ray's grey values mean density, and blending them with a made-up background would change them.
  Pillow decodes 16-bit *colour* PNG/TIFF to 8 bits per channel; 16-bit grey keeps its precision.
* 16-bit grey (``I;16``): divided by 2**bits - 1, where ``bits`` is the PNG ``sBIT`` chunk's significant
  bits when it declares fewer than 16 and the values fit them (values beyond them were scaled to 16 bits,
  as the PNG spec asks: 16 is used); otherwise the smallest detector depth of 8, 10, 12, 14 or 16 bits
  that holds the image's largest value. So 12-bit data stored in 16 bits without sBIT (0-4095) reads like
  the same X-ray in 8 bits instead of nearly black, and an 8-bit image saved as 16 bits (values * 257)
  reads identically. ``meta["value_range"]`` gives the range used.
* 32-bit integer or float (``I``, ``F``): stretched from the image's own minimum to maximum.
* DICOM grey: the Modality LUT or RescaleSlope/Intercept, then the first VOI LUT (preferred) or the
  first WindowCenter/Width (one with a width the standard does not allow is ignored, as viewers do),
  mapped from that transform's output range to [0, 1]; without a VOI the range of possible stored values
  (BitsStored, PixelRepresentation, after rescale) maps to [0, 1].
  MONOCHROME1 is then inverted. Colour DICOM (3 samples): BT.601 luminance over 2**BitsStored - 1.
  Multi-frame DICOM and multi-page TIFF: only the first frame is read (``meta["frames"]`` says so).
* Compressed DICOM is decoded by pydicom's plugins: Pillow and GDCM (JPEG Lossless, JPEG-LS, JPEG 2000, RLE);
  12-bit JPEG Extended needs pylibjpeg-libjpeg (GPL-3.0, not a dependency) and is otherwise "unsupported".

EXIF orientation is applied; :class:`ImageInfo` width and height are those of the upright image in the
file (a PNG's eXIf chunk placed after the pixel data is only seen by ``read_image``, not by ``read_header``).

Working size: ``read_image`` returns at most :data:`WORKING_SIDE` pixels on the longest side, aspect ratio kept
(``pixels.shape == (info.height, info.width)`` for smaller images; ``meta["downscaled_from"]`` says when it
was reduced). Memory follows what is decoded, not what a header declares: a JPEG is decoded at a reduced
DCT scale (Pillow's ``draft``), other formats are decoded, brought to grey and reduced (Pillow's
``resize`` with ``reducing_gap``, OpenCV's area resize for DICOM) while still 8/16-bit integers, and only then
turned into float32. A JPEG whose compressed data is too small to hold its declared size (under one byte per
:data:`_JPEG_PIXELS_PER_BYTE` pixels) is refused as truncated: libjpeg would fill the missing part with
grey without an error.

Size limit: ``max_pixels`` is checked from the header before any decoding (for DICOM, Rows * Columns *
frames; for a deflated DICOM before anything past its image header is inflated, and its inflated size is
capped by what those pixels need). Pillow's own hard limit, 2 * ``PIL.Image.MAX_IMAGE_PIXELS`` (about
179 million), also applies and is reported as "too large"; its warning is silenced, since ``max_pixels``
replaces it.

Refused as well: anything but a regular file (a FIFO, socket or device is never opened, so a read cannot
hang), non-finite pixel values (NaN/inf, e.g. a float TIFF or a NaN RescaleSlope), and, in ``read_image``,
an image that is not a usable chest X-ray (:mod:`lungscope.data.plausibility`: tiny, extreme aspect ratio,
blank), which raises :class:`~lungscope.data.plausibility.ImplausibleImageError`.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from io import BytesIO
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pydicom
from PIL import ExifTags, Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from lungscope.data.plausibility import check_plausible
from lungscope.errors import ImageReadError

MAX_PIXELS: int = 100_000_000
WORKING_SIDE: int = 2048  # longest side of what read_image returns: well above any model input, a bounded array
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
_UNSUPPORTED_WORDS = ("not supported", "does not support", "missing dependencies")
# Huffman-coded JPEG needs at least one bit per 8x8 block (its DC code), one byte per 512 pixels; 8 times less
# leaves room for arithmetic coding. Fewer bytes than this cannot hold the declared size: the rest is missing.
_JPEG_PIXELS_PER_BYTE = 4096
_DEFLATED_HEADER_BYTES = 1 << 20  # inflated bytes allowed for a deflated DICOM's elements before its pixel data
_DETECTOR_BITS = (8, 10, 12, 14, 16)  # bit depths of 16-bit grey data without sBIT: the smallest that fits is used
# EXIF orientation -> the transpose that makes the image upright, as ImageOps.exif_transpose applies it. Written
# out because exif_transpose reads the EXIF of the opened file, which the grey, reduced copy no longer carries.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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


# How entry_problem's reasons (and the folder walker's "permission denied") begin: what cannot even be opened.
UNOPENABLE = ("file not found", "broken symlink", "symlink loop", "cannot open", "not a regular file",
              "permission denied")


def entry_problem(path: str | PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as a file, found without opening it (missing, broken symlink, symlink loop, not a
    regular file, no access; a folder), or None for a regular file. A FIFO or device is never opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"broken symlink (to {os.readlink(path)})" if os.path.islink(path) else "file not found"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop: not followed"
        return f"cannot open: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "not an image: it is a directory"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device): not opened"
    return None


def named_like_image(path: str | PathLike[str]) -> bool:
    """A supported suffix, no suffix or a UID-like numeric one (DICOM files are often named so)."""
    suffix = Path(path).suffix.lower()
    return suffix in IMAGE_SUFFIXES or not suffix or suffix[1:].isdigit()


def sniff_format(path: str | PathLike[str]) -> str | None:
    """Return the format named by the file's magic bytes, or None if unknown, unreadable or not a regular file."""
    if entry_problem(path) is not None:
        return None
    try:
        with open(path, "rb") as f:
            return _format_of(f.read(_HEAD_BYTES))
    except OSError:
        return None


def is_image_candidate(path: str | PathLike[str]) -> bool:
    """True for a supported suffix, or for a DICOM file (by content) with no suffix or a UID-like name."""
    # DICOM files often have no suffix, or are named by a UID such as "1.2.840.113619.2.55.7" (suffix ".7").
    return Path(path).suffix.lower() in IMAGE_SUFFIXES or (named_like_image(path) and sniff_format(path) == "DICOM")


def read_header(path: str | PathLike[str], *, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Read only the header: format, upright size, mode, bit depth. Raises ImageReadError."""
    path = Path(path)
    fmt = _identify(path)
    if fmt == "DICOM":
        return _dicom_header(path, max_pixels)[1]
    with _open_raster(path, fmt, max_pixels) as im:
        return _raster_info(path, fmt, im, _orientation(im, fmt), im.size)


def read_image(path: str | PathLike[str], *, max_pixels: int = MAX_PIXELS) -> XRay:
    """Decode an image to 2-D float32 in [0, 1], at most :data:`WORKING_SIDE` on the longest side (see the module
    docstring). Raises ImageReadError, and ImplausibleImageError for an image that cannot be a chest X-ray."""
    xray = _decode(Path(path), max_pixels)
    check_plausible(str(path), xray.pixels, xray.info.width, xray.info.height)
    return xray


def read_mask(path: str | PathLike[str], *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A binary mask file (e.g. a lung mask, 0 background and 255 inside) as a boolean array: decoded as
    :func:`read_image` decodes, without its check that the image is a plausible X-ray (a mask has two grey
    levels), and thresholded at half the range."""
    return _decode(Path(path), max_pixels).pixels >= 0.5


def _decode(path: Path, max_pixels: int) -> XRay:
    fmt = _identify(path)
    return _read_dicom(path, max_pixels) if fmt == "DICOM" else _read_raster(path, fmt, max_pixels)


def verify_image(path: str | PathLike[str], *, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Detect a truncated or corrupt file as cheaply as the format allows; return its header.

    JPEG is decoded at 1/8 scale (every byte is still read and entropy-decoded), PNG chunk CRCs are
    checked up to IEND without inflating the pixels, DICOM decodes its first frame, others load fully.
    """
    path = Path(path)
    fmt = _identify(path)
    if fmt == "DICOM":
        ds, info = _dicom_header(path, max_pixels)
        with _decoding(path):
            _dicom_frame(path, ds)
        return info
    with _open_raster(path, fmt, max_pixels) as im:
        info = _raster_info(path, fmt, im, _orientation(im, fmt), im.size)
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
    # DICOM first: its 128-byte preamble may hold another format's header (dual-personality DICOM/TIFF files).
    if head[128:132] == b"DICM":
        return "DICOM"
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
    return None


# Formats lungscope does not read, by their magic bytes: named in the refusal with what to do, so that a user knows
_CONVERT = f"save it as one of {_FORMAT_NAMES}"
_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"GIF8", f"a GIF image; {_CONVERT}"), (b"%PDF", f"a PDF document; {_CONVERT}"),
    (b"\x00\x00\x00\x0cjP  ", f"a JPEG 2000 image; {_CONVERT}"), (b"\xffO\xffQ", f"a JPEG 2000 codestream; {_CONVERT}"),
    (b"<svg", f"an SVG drawing; {_CONVERT}"), (b"PK\x03\x04", "a ZIP archive; extract its images first"),
    (b"\x1f\x8b", "a gzip archive; extract its images first"),
)
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif"})  # ISO base media "ftyp" brands


def _bare_dicom(head: bytes) -> bool:
    """Whether the file starts as a DICOM data set does, without the file's preamble and "DICM": with a small element
    of group 0002 or 0008 (little- or big-endian), then two VR letters or an implicit VR's length."""
    if len(head) < 8:
        return False
    little = head[:2] in (b"\x02\x00", b"\x08\x00") and head[3] == 0
    big = head[:3] in (b"\x00\x02\x00", b"\x00\x08\x00")
    explicit = head[4:6].isalpha() and head[4:6].isupper()
    implicit = int.from_bytes(head[4:8], "little" if little else "big") < 0x10000
    return (little or big) and (explicit or implicit)


def _other_format(head: bytes) -> str | None:
    """What a file lungscope does not read is, and what to do, when its first bytes say so."""
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return f"a HEIC/HEIF or AVIF photo, as phones save them; {_CONVERT}"
    if _bare_dicom(head):
        return ("a DICOM data set without the DICOM file header (its preamble and 'DICM'), as some older systems "
                "write; export it again as a DICOM file")
    return next((reason for magic, reason in _OTHER_FORMATS if head.startswith(magic)), None)


def _identify(path: Path) -> str:
    """Check that the file is a regular file, readable and not empty; return its format by content."""
    if (problem := entry_problem(path)) is not None:
        raise ImageReadError(path, problem)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc.strerror or exc}") from exc
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    fmt = _format_of(head)
    if fmt is None:
        other = _other_format(head)
        raise ImageReadError(path, f"unsupported: {other}" if other
                             else f"not an image: the content is not {_FORMAT_NAMES}")
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
def _warnings_filtered(action: Literal["error", "ignore"], **which: Any) -> Iterator[None]:
    """One warnings filter for this block. The lock stops threads (the audit uses them) from restoring
    each other's filters out of order, which ``catch_warnings`` alone allows, leaking a filter for good."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings(action, **which)
        yield


def _check_size(path: Path, pixels: int, shape: str, max_pixels: int) -> None:
    if pixels > max_pixels:
        raise ImageReadError(path, f"too large: {shape} is {pixels:,} pixels, over the limit of {max_pixels:,}")


def _check_finite(path: Path, values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise ImageReadError(path, "non-finite pixel values (NaN/inf)")


def _unit_float32(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(values, 0.0, 1.0), dtype=np.float32)


def _working_shape(height: int, width: int) -> tuple[int, int]:
    """(height, width) scaled so that the longest side is at most WORKING_SIDE, aspect ratio kept."""
    scale = min(1.0, WORKING_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


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
            if fmt == "JPEG" and (size := path.stat().st_size) * _JPEG_PIXELS_PER_BYTE < im.width * im.height:
                raise ImageReadError(path, f"truncated: {size:,} bytes of JPEG cannot hold {im.width}x{im.height} "
                                           "pixels (the missing part would read as grey)")
            yield im


def _orientation(im: Image.Image, fmt: str) -> int:
    """The EXIF orientation (1 = upright) known from the header."""
    if fmt == "PNG" and "exif" not in im.info:
        return 1  # asking Pillow would decode the image to look for an eXIf chunk after the pixels
    value = im.getexif().get(ExifTags.Base.Orientation, 1)
    return value if value in range(1, 9) else 1


def _raster_info(path: Path, fmt: str, im: Image.Image, orientation: int, size: tuple[int, int]) -> ImageInfo:
    """The header's description; ``size`` is the file's (width, height), which a JPEG draft does not change."""
    width, height = size[::-1] if orientation in _SWAPS_AXES else size
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


def _read_raster(path: Path, fmt: str, max_pixels: int) -> XRay:
    """Decode (a JPEG at a reduced DCT scale), bring to grey, reduce to the working size, then make float."""
    with _open_raster(path, fmt, max_pixels) as im:
        size = im.size
        if fmt == "JPEG":
            im.draft(None, _working_shape(im.height, im.width)[::-1])  # a scale of 1/2, 1/4 or 1/8 that still covers it
        # TIFF checks Pillow's decompression-bomb size again when it loads; max_pixels has replaced that warning
        huge = im.width * im.height > (Image.MAX_IMAGE_PIXELS or 0)
        with _warnings_filtered("ignore", category=Image.DecompressionBombWarning) if huge else nullcontext():
            im.load()
        orientation = _orientation(im, fmt)
        info = _raster_info(path, fmt, im, orientation, size)
        meta: dict[str, object] = {"alpha": "dropped"} if "A" in im.mode or "transparency" in im.info else {}
        if (frames := getattr(im, "n_frames", 1)) > 1:
            meta["frames"] = f"first of {frames} used"
        grey = im if im.mode.startswith("I;16") or im.mode in ("I", "F") else im.convert("L")
        top = _grey_top(grey, info.bit_depth)  # from the full image, before reducing averages values
        if (target := _working_shape(*size[::-1])[::-1]) != grey.size:  # from the file's size: a draft rounds
            # an integer reduce() first, then box; Pillow's reduce() does not take 16-bit modes (wrong mode past a
            # factor of 2), so those are box-filtered in one step
            gap = None if grey.mode.startswith("I;16") else 2.0
            grey = grey.resize(target, Image.Resampling.BOX, reducing_gap=gap)
        if orientation != 1:
            grey = grey.transpose(_UPRIGHT[orientation])
            meta["exif_orientation"] = orientation
    if (info.height, info.width) != grey.size[::-1]:
        meta["downscaled_from"] = (info.height, info.width)
    return XRay(pixels=_unit_float32(_raster_unit(path, grey, top, meta)), info=info, meta=meta)


def _grey_top(grey: Image.Image, bit_depth: int) -> int:
    """The value that reads as 1.0 for 16-bit grey: sBIT's if the values fit it, else the smallest detector depth
    holding the largest value (module docstring); 255 for 8-bit grey; 0 (unused) for I and F."""
    if grey.mode == "L":
        return 255
    if not grey.mode.startswith("I;16"):
        return 0
    largest = grey.getextrema()[1]
    if bit_depth < 16:  # sBIT; values beyond it were scaled to 16 bits
        return 2**bit_depth - 1 if largest < 2**bit_depth else 2**16 - 1
    return 2 ** min(b for b in _DETECTOR_BITS if largest < 2**b) - 1


def _raster_unit(path: Path, grey: Image.Image, top: int, meta: dict[str, object]) -> np.ndarray:
    """Grey values in [0, 1] by mode, as the module docstring describes."""
    if grey.mode in ("I", "F"):
        values = np.asarray(grey, dtype=np.float64)
        _check_finite(path, values)
        low, high = float(values.min()), float(values.max())
        meta["value_range"] = (low, high)
        return (values - low) / ((high - low) or 1.0)
    if grey.mode != "L":
        meta["value_range"] = (0, top)
    return np.asarray(grey, dtype=np.float32) / top


# --- DICOM -----------------------------------------------------------------------------------


def _dicom_header(path: Path, max_pixels: int) -> tuple[Dataset, ImageInfo]:
    """Read a DICOM file but its large values (pixel data above all), and check it (see _dicom_info)."""
    with _decoding(path):
        # pydicom only warns when the file ends inside an element (and drops it): make that an error.
        with _warnings_filtered("error", message="End of file reached", category=UserWarning):
            meta = read_file_meta_info(path)
            if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
                ds, size = _inflated_dicom(path, meta, max_pixels)
            else:
                ds, size = pydicom.dcmread(path, defer_size=_DEFER_BYTES), path.stat().st_size
        return ds, _dicom_info(path, ds, max_pixels, size)


def _inflated_dicom(path: Path, meta: FileMetaDataset, max_pixels: int) -> tuple[Dataset, int]:
    """A deflated DICOM's data set and its inflated size, inflated only as far as its Rows, Columns, frames,
    samples and BitsAllocated allow: pydicom would inflate all of it before any element can be checked."""
    # Hand-written because pydicom inflates the whole stream at once (a 1.5 MB file can hold 1.5 GB of zeros).
    with path.open("rb") as f:
        f.seek(_HEAD_BYTES + 12 + int(meta.FileMetaInformationGroupLength))  # after the (0002,0000) element's group
        compressed = f.read()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head = inflater.decompress(compressed, _DEFLATED_HEADER_BYTES)
    # Stops before the first element past the image pixel module (group 0028); a header that does not fit in
    # _DEFLATED_HEADER_BYTES ends inside an element, which _dicom_header's filter makes an error.
    header = read_dataset(BytesIO(head), False, True, stop_when=lambda tag, *_: tag.group > 0x0028)
    rows, columns, frames = int(header.get("Rows") or 0), int(header.get("Columns") or 0), _frames(header)
    if not rows or not columns:
        raise ImageReadError(path, "corrupt or unreadable: deflated DICOM without Rows/Columns in its first "
                                   f"{_DEFLATED_HEADER_BYTES:,} inflated bytes")
    _check_size(path, rows * columns * frames, f"{columns}x{rows}x{frames} frames", max_pixels)
    samples, bits = int(header.get("SamplesPerPixel") or 1), int(header.get("BitsAllocated") or 16)
    cap = _DEFLATED_HEADER_BYTES + rows * columns * frames * samples * -(-bits // 8)
    body = head + inflater.decompress(inflater.unconsumed_tail, max(1, cap - len(head)))
    if inflater.unconsumed_tail:
        raise ImageReadError(path, f"too large: the deflated data inflates past {cap:,} bytes, more than its "
                                   f"{columns}x{rows}x{frames} pixels need")
    if not inflater.eof:
        raise ImageReadError(path, "truncated: the deflated data ends before its end marker")
    ds = read_dataset(BytesIO(body), False, True)
    ds.file_meta = meta
    return ds, len(body)


def _dicom_frame(path: Path, ds: Dataset) -> np.ndarray:
    """The first frame's stored values, read from disk (only that frame) or from an inflated data set."""
    deflated = ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    return pixel_array(ds if deflated else path, index=0)


def _dicom_info(path: Path, ds: Dataset, max_pixels: int, size: int) -> ImageInfo:
    """Check a DICOM header (pixel data present within ``size`` bytes, size, photometric interpretation) and
    describe it."""
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:  # a parametric map; no radiograph stores floats
        raise ImageReadError(path, "unsupported: DICOM float pixel data, which no radiograph stores")
    if "PixelData" not in ds:
        raise ImageReadError(path, "no pixel data: the DICOM file has no (7FE0,0010) Pixel Data element")
    # A raw (deferred) element gives its position and declared length without reading the value; an element that
    # pydicom has already converted has no length (its value was read whole), so only raw ones are checked here.
    pixel_data = ds.get_item("PixelData")
    length = getattr(pixel_data, "length", None)
    if length is not None and length != _UNDEFINED_LENGTH and (
        missing := pixel_data.value_tell + length - size  # type: ignore[attr-defined]  # only raw elements have a length
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
        frame = _dicom_frame(path, ds)
        if (shape := _working_shape(*frame.shape[:2])) != frame.shape[:2]:
            # OpenCV's area average keeps 8/16-bit integers integers (a VOI LUT indexes by them); others go float32.
            stored = frame if frame.dtype in (np.uint8, np.uint16, np.int16) else frame.astype(np.float32)
            frame = cv2.resize(stored, shape[::-1], interpolation=cv2.INTER_AREA)
            meta["downscaled_from"] = (info.height, info.width)
        if info.mode in _MONOCHROME:
            pixels = _dicom_grey(path, frame, ds, meta)
        else:  # three samples; pydicom has already turned YBR into RGB
            pixels = frame @ _LUMA / (2**info.bit_depth - 1)
    return XRay(pixels=_unit_float32(pixels), info=info, meta=meta)


def _dicom_grey(path: Path, frame: np.ndarray, ds: Dataset, meta: dict[str, object]) -> np.ndarray:
    """Modality LUT/rescale, then VOI LUT or window, mapped to [0, 1]; MONOCHROME1 inverted."""
    values = apply_modality_lut(frame, ds)
    _check_finite(path, values)  # a NaN RescaleSlope; windowing would hide it
    if luts := ds.get("VOILUTSequence"):
        entries, first = int(luts[0].LUTDescriptor[0]) or 2**16, int(luts[0].LUTDescriptor[1])
        table = apply_voi(np.arange(first, first + entries), ds)
        # The table's own range, not its nominal bit depth: vendors often declare 16 bits for 12-bit data.
        low, high = float(table.min()), float(table.max())
        values = apply_voi(np.clip(np.rint(values), first, first + entries - 1).astype(np.int64), ds)
        meta["voi"] = "VOI LUT"
    elif (window := _window(path, ds, meta)) is not None:
        meta["window"] = window
        with np.errstate(over="ignore"):  # a SIGMOID window's exp() overflows far from its centre, where it is flat
            low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)  # the window's output range
            values = apply_windowing(values, ds)
        meta["voi"] = "window"
    else:
        low, high = sorted(apply_modality_lut(np.array(_stored_range(ds)), ds))
        meta["voi"] = "none: full stored range"
    unit = (values - low) / ((high - low) or 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        meta["inverted"] = "MONOCHROME1 to MONOCHROME2"
        return 1.0 - unit
    return unit


def _window(path: Path, ds: Dataset, meta: dict[str, object]) -> tuple[float, float] | None:
    """The first window's centre and width, or None without one. Text that is not a number (pydicom keeps an invalid
    DS as text) is refused here, before pydicom's windowing fails on it with a type error; a width the standard does
    not allow (under 1 for LINEAR, not positive otherwise: PS3.3 C.11.2.1.2) is a display hint some devices write
    wrong, ignored as viewers ignore it (noted in ``meta``), so the full stored range is used."""
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    try:
        center, width = float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth))
    except (TypeError, ValueError):
        raise ImageReadError(path, "corrupt or unreadable: WindowCenter/WindowWidth are not numbers "
                                   f"({ds.WindowCenter!r}, {ds.WindowWidth!r})") from None
    if not (width >= 1 if str(ds.get("VOILUTFunction", "LINEAR")).upper() == "LINEAR" else width > 0):  # NaN too
        meta["window_ignored"] = f"width {width:g} is not a valid window width"
        return None
    return center, width


def _frames(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames") or 1)


def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    if ds.get("PixelRepresentation") == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _first(value: Any) -> Any:
    """The first of a multi-valued DICOM element (pydicom applies the first window too)."""
    return value[0] if isinstance(value, MultiValue) else value
