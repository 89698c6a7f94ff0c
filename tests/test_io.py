"""Tests of lungscope.data.io: one reader for JPEG, PNG, TIFF, WebP, BMP and DICOM chest X-rays."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

import lungscope.data.io as io_module
from lungscope.data.io import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ImageInfo,
    is_image_candidate,
    read_header,
    read_image,
    sniff_format,
    verify_image,
)
from lungscope.errors import ImageReadError, one_line

H, W = 72, 96  # not square (and over the plausibility minimum of 64), so a transposed result is caught
GREY = np.round(np.add.outer(np.linspace(0, 120, H), np.linspace(0, 135, W))).astype(np.uint8)  # smooth 0..255
STORED12 = (np.arange(72 * 96).reshape(72, 96) * 7 % 4096).astype(np.uint16)  # 12-bit values, 0 to 4095


def _assert_unit_image(pixels: np.ndarray, shape: tuple[int, int]) -> None:
    assert pixels.dtype == np.float32
    assert pixels.shape == shape
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def _write_dicom(
    path: Path,
    stored: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    pixel_data: bool = True,
    **attributes: object,
) -> Path:
    """Write a little-endian explicit-VR DX file of unsigned 16-bit stored values."""
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    file_meta.MediaStorageSOPInstanceUID = generate_uid()
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = file_meta
    ds.SOPClassUID, ds.SOPInstanceUID = file_meta.MediaStorageSOPClassUID, file_meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality, ds.ViewPosition = "PAT-7", "DX", "PA"
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if pixel_data:
        ds.PixelData = stored.astype("<u2").tobytes()
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def _blank_png(path: Path, width: int, height: int) -> Path:
    """A genuine all-black 1-bit PNG, compressed row by row: even 20000x20000 costs little time or memory to write."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj()
    row = bytes(1 + (width + 7) // 8)  # filter type 0, then the packed bits
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


# --- identification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("a.jpg", {}, "JPEG"),
        ("a.png", {}, "PNG"),
        ("a.tif", {}, "TIFF"),
        ("a.webp", {}, "WEBP"),
        ("a.bmp", {}, "BMP"),
        ("png_named.jpg", {"format": "PNG"}, "PNG"),
    ],
)
def test_sniff_format_reads_content_not_suffix(tmp_path: Path, name: str, kwargs: dict, expected: str) -> None:
    Image.fromarray(GREY).save(tmp_path / name, **kwargs)
    assert sniff_format(tmp_path / name) == expected


def test_sniff_format_dicom_unknown_and_missing(tmp_path: Path) -> None:
    assert sniff_format(_write_dicom(tmp_path / "noext", STORED12)) == "DICOM"
    (tmp_path / "notes.png").write_text("not a picture at all")
    assert sniff_format(tmp_path / "notes.png") is None
    assert sniff_format(tmp_path / "missing.png") is None


def test_is_image_candidate(tmp_path: Path) -> None:
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".dcm", ".dicom"} == IMAGE_SUFFIXES
    assert is_image_candidate(tmp_path / "IM-0001.JPEG")  # suffixes are case-insensitive; no content needed
    assert not is_image_candidate(tmp_path / "labels.csv")
    assert is_image_candidate(_write_dicom(tmp_path / "IMG00001", STORED12))
    assert is_image_candidate(_write_dicom(tmp_path / "1.2.840.10008.42", STORED12))  # named by its UID
    (tmp_path / "README").write_text("x" * 200)
    assert not is_image_candidate(tmp_path / "README")


# --- PNG bit depths ----------------------------------------------------------------------


def test_16bit_png_equals_8bit(tmp_path: Path) -> None:
    Image.fromarray(GREY).save(tmp_path / "g8.png")
    Image.fromarray(GREY.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    x8, x16 = read_image(tmp_path / "g8.png"), read_image(tmp_path / "g16.png")
    assert (x8.info.mode, x8.info.bit_depth, x16.info.mode, x16.info.bit_depth) == ("L", 8, "I;16", 16)
    _assert_unit_image(x16.pixels, (H, W))
    np.testing.assert_allclose(x16.pixels, x8.pixels, atol=1e-6)
    np.testing.assert_allclose(x8.pixels, GREY / 255, atol=1e-6)


@pytest.mark.parametrize(
    ("sbit", "scaled", "expected_bits", "divisor"),
    [
        (12, False, 12, 4095),  # sBIT says 12 bits and the values fit: divide by 4095
        (None, False, 16, 4095),  # no sBIT: the smallest detector depth holding the values (12 bits)
        (12, True, 12, 4095),  # sBIT 12 but values scaled to 16 bits as the PNG spec asks
    ],
)
def test_12bit_values_in_16bit_png(
    tmp_path: Path, sbit: int | None, scaled: bool, expected_bits: int, divisor: int
) -> None:
    values = STORED12
    stored = (values << 4) | (values >> 8) if scaled else values  # left bit replication fills 0..65535
    info = PngImagePlugin.PngInfo()
    if sbit:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(stored).save(tmp_path / "x12.png", pnginfo=info)
    xray = read_image(tmp_path / "x12.png")
    assert xray.info.bit_depth == expected_bits == read_header(tmp_path / "x12.png").bit_depth
    _assert_unit_image(xray.pixels, values.shape)
    np.testing.assert_allclose(xray.pixels, values / divisor, atol=2e-4 if scaled else 1e-6)


@pytest.mark.parametrize(("largest", "divisor"), [(255, 255), (1023, 1023), (1024, 4095), (16383, 16383),
                                                  (16384, 65535)])
def test_16bit_grey_without_sbit_uses_the_smallest_detector_depth(tmp_path: Path, largest: int, divisor: int) -> None:
    values = (GREY.astype(np.uint32) * largest // 255).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "x.png")
    xray = read_image(tmp_path / "x.png")
    assert xray.meta["value_range"] == (0, divisor)
    np.testing.assert_allclose(xray.pixels, values / divisor, atol=1e-6)


# --- DICOM -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mono1.dcm", "mono1"])
def test_monochrome1_equals_monochrome2(tmp_path: Path, name: str) -> None:
    mono2 = read_image(_write_dicom(tmp_path / "mono2", STORED12))
    mono1 = read_image(_write_dicom(tmp_path / name, 4095 - STORED12, photometric="MONOCHROME1"))
    _assert_unit_image(mono1.pixels, STORED12.shape)
    np.testing.assert_allclose(mono1.pixels, mono2.pixels, atol=1e-6)
    np.testing.assert_allclose(mono2.pixels, STORED12 / 4095, atol=1e-6)  # no VOI: the 12-bit stored range
    assert mono1.info == ImageInfo(str(tmp_path / name), "DICOM", 96, 72, "MONOCHROME1", 12)
    assert mono1.meta["PatientID"] == "PAT-7" and mono1.meta["ViewPosition"] == "PA"


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_rescale_then_window(tmp_path: Path, photometric: str) -> None:
    center, width = 2500.0, 3001.0
    path = _write_dicom(
        tmp_path / "win.dcm", STORED12, photometric=photometric,
        RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=center, WindowWidth=width,
    )
    modality = 2.0 * STORED12 - 1000  # values from -1000 to 7190: the window clips both ends
    expected = np.clip((modality - (center - 0.5)) / (width - 1) + 0.5, 0, 1)  # DICOM PS3.3 C.11.2.1.2 LINEAR
    if photometric == "MONOCHROME1":
        expected = 1 - expected
    xray = read_image(path)
    assert (expected == 0).sum() > 0 and (expected == 1).sum() > 0
    np.testing.assert_allclose(xray.pixels, expected, atol=1e-6)
    assert xray.meta["window"] == (center, width) and xray.meta["rescale"] == (2.0, -1000.0)


@pytest.mark.parametrize(("width", "function"), [(0.0, "LINEAR"), (0.5, "LINEAR"), (0.0, "SIGMOID"),
                                                 (-3.0, "LINEAR_EXACT")])
def test_dicom_window_of_invalid_width_is_ignored(tmp_path: Path, width: float, function: str) -> None:
    """Some devices write WindowWidth 0: the image reads over its stored range, as with no window, not refused."""
    path = _write_dicom(tmp_path / "w0.dcm", STORED12, WindowCenter=2048, WindowWidth=width, VOILUTFunction=function)
    xray = read_image(path)
    np.testing.assert_allclose(xray.pixels, STORED12 / 4095, atol=1e-6)
    assert "window" not in xray.meta and "not a valid window width" in str(xray.meta["window_ignored"])


def test_a_steep_sigmoid_window_reads_without_numpy_warnings(tmp_path: Path) -> None:
    """pydicom's SIGMOID window overflows exp() far from its centre (a RuntimeWarning on the user's console)."""
    path = _write_dicom(tmp_path / "s.dcm", STORED12, WindowCenter=2048, WindowWidth=2, VOILUTFunction="SIGMOID")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xray = read_image(path)
    assert np.array_equal(xray.pixels > 0.5, STORED12 > 2048)  # bright above the centre, dark below


def test_dicom_voi_lut_preferred_over_window(tmp_path: Path) -> None:
    lut = np.round(np.sqrt(np.arange(4096) / 4095) * 4000 + 95).astype(int)  # outputs 95..4095, nominally 16 bits
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUT Descriptor: entries, first mapped value, bits
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    path = _write_dicom(tmp_path / "lut.dcm", STORED12, VOILUTSequence=[item], WindowCenter=100, WindowWidth=50)
    xray = read_image(path)
    assert xray.meta["voi"] == "VOI LUT"
    np.testing.assert_allclose(xray.pixels, (lut[STORED12] - 95) / 4000, atol=1e-6)


def test_dicom_first_frame_and_compressed(tmp_path: Path) -> None:
    multi = read_image(_write_dicom(tmp_path / "multi.dcm", np.stack([STORED12, 4095 - STORED12])))
    np.testing.assert_allclose(multi.pixels, STORED12 / 4095, atol=1e-6)
    assert "first of 2" in str(multi.meta["frames"])
    ds = dcmread(_write_dicom(tmp_path / "plain.dcm", STORED12))
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    np.testing.assert_allclose(read_image(tmp_path / "rle.dcm").pixels, STORED12 / 4095, atol=1e-6)


def _transcoded(source: Path, target: Path, syntax: str) -> Path:
    """``source`` re-encoded by GDCM (the decoder lungscope installs) to one of its transfer syntaxes."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return target


# The compressions of hospital archives' DX/CR files that Pillow cannot decode (JPEG Lossless above all).
@pytest.mark.parametrize("syntax", ["JPEGLosslessProcess14_1", "JPEGLSLossless", "JPEG2000Lossless", "RLELossless"])
def test_compressed_dicom_of_a_real_xray_reads_as_the_uncompressed(
    lung_masks: Path, tmp_path: Path, syntax: str
) -> None:
    grey = np.asarray(Image.open(lung_masks / "images" / "CHNCXR_0001_0.png").convert("L"), dtype=np.uint16)
    plain = _write_dicom(tmp_path / "plain.dcm", grey * 16)  # 12-bit stored values, as a detector writes them
    packed = _transcoded(plain, tmp_path / "packed.dcm", syntax)
    assert dcmread(packed).file_meta.TransferSyntaxUID != ExplicitVRLittleEndian  # really re-encoded
    expected = read_image(plain).pixels
    np.testing.assert_array_equal(read_image(packed).pixels, expected)  # lossless: the same values exactly
    np.testing.assert_allclose(expected, grey * 16 / 4095, atol=1e-6)


def test_undecodable_compressed_dicom_is_one_line_naming_each_decoder(tmp_path: Path) -> None:
    ds = dcmread(_write_dicom(tmp_path / "plain.dcm", STORED12))
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)])  # a J2K start and nothing valid after it
    ds.save_as(tmp_path / "broken.dcm")
    with pytest.raises(ImageReadError) as caught:
        read_image(tmp_path / "broken.dcm")
    reason = caught.value.reason
    assert "\n" not in str(caught.value) and reason.startswith("corrupt or unreadable: ")
    assert "gdcm: " in reason and "; pillow: " in reason  # pydicom's one line per decoder, joined


def test_one_line_joins_a_message_of_several_lines() -> None:
    assert one_line("Unable to decode:\n  gdcm: bad\n  pillow: worse\n") == "Unable to decode: gdcm: bad; pillow: worse"
    assert one_line("first\n\nsecond") == "first; second"
    assert one_line("plain") == "plain" and one_line("") == ""


def test_dicom_with_a_tiff_preamble_reads_as_dicom(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "dual.dcm", STORED12)
    content = bytearray(path.read_bytes())
    content[:8] = b"II*\x00\x08\x00\x00\x00"  # a TIFF header in the 128-byte preamble (dual-personality files)
    path.write_bytes(bytes(content))
    assert sniff_format(path) == "DICOM"
    np.testing.assert_allclose(read_image(path).pixels, STORED12 / 4095, atol=1e-6)


def test_dicom_errors(tmp_path: Path) -> None:
    no_pixels = _write_dicom(tmp_path / "nopix.dcm", STORED12, pixel_data=False)
    palette = _write_dicom(tmp_path / "palette.dcm", STORED12, photometric="PALETTE COLOR")
    whole = _write_dicom(tmp_path / "whole.dcm", STORED12).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[:-1000])
    text_window = _write_dicom(tmp_path / "window.dcm", STORED12, WindowCenter="1234", WindowWidth="5678")
    text_window.write_bytes(text_window.read_bytes().replace(b"1234", b"abcd"))
    floats = _write_dicom(tmp_path / "float.dcm", STORED12, pixel_data=False)
    ds = dcmread(floats)
    ds.BitsAllocated, ds.FloatPixelData = 32, STORED12.astype("<f4").tobytes()
    ds.save_as(floats)
    cases = [(no_pixels, "no pixel data", (read_header, read_image, verify_image)),
             (floats, "unsupported: DICOM float pixel data", (read_header, read_image, verify_image)),
             (palette, "unsupported", (read_header, read_image, verify_image)),
             (tmp_path / "cut.dcm", "truncated", (read_header, read_image, verify_image)),
             (text_window, "corrupt or unreadable: WindowCenter/WindowWidth are not numbers", (read_image,))]
    for path, reason, functions in cases:
        for function in functions:
            with pytest.raises(ImageReadError) as caught:
                function(path)
            assert str(caught.value).startswith(f"{path}: ") and caught.value.reason.startswith(reason)


# --- orientation and colour modes ----------------------------------------------------------


@pytest.mark.parametrize(("orientation", "turns"), [(6, 1), (8, -1)])
def test_exif_orientation_applied(tmp_path: Path, orientation: int, turns: int) -> None:
    upright = np.full((96, 64), 40, np.uint8)
    upright[8:40, 8:28] = 230  # large bright block top-left, grey block bottom-right: any turn moves them
    upright[60:90, 36:60] = 140
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: display = stored turned 90 degrees clockwise; 8: counter-clockwise
    Image.fromarray(np.rot90(upright, turns)).save(tmp_path / "turned.jpg", quality=95, exif=exif)
    turned, reference = read_image(tmp_path / "turned.jpg"), read_image(tmp_path / "upright.jpg")
    _assert_unit_image(turned.pixels, upright.shape)
    assert np.abs(turned.pixels - reference.pixels).mean() < 0.01
    assert np.corrcoef(turned.pixels.ravel(), upright.ravel())[0, 1] > 0.99
    assert turned.meta["exif_orientation"] == orientation
    assert (turned.info.width, turned.info.height) == (64, 96)  # the upright size, in the header too
    assert read_header(tmp_path / "turned.jpg") == turned.info


def _palette_image(grey: np.ndarray) -> Image.Image:
    image = Image.frombytes("P", (grey.shape[1], grey.shape[0]), grey.tobytes())
    image.putpalette([level for index in range(256) for level in (index, index, index)])
    image.info["transparency"] = 0
    return image


def _with_alpha(mode: str) -> Image.Image:
    alpha = Image.fromarray(np.random.default_rng(0).integers(0, 256, GREY.shape, dtype=np.uint8))
    image = Image.fromarray(GREY).convert(mode)
    image.putalpha(alpha)
    return image


MODES: dict[str, tuple[Callable[[], Image.Image], str, dict, np.ndarray, float]] = {
    # name: (image, file name, save options, expected grey in [0, 1], tolerance)
    "rgb_png": (lambda: Image.fromarray(GREY).convert("RGB"), "x.png", {}, GREY / 255, 1e-6),
    "rgba_png": (lambda: _with_alpha("RGB"), "x.png", {}, GREY / 255, 1e-6),
    "la_png": (lambda: _with_alpha("L"), "x.png", {}, GREY / 255, 1e-6),
    "palette_png": (lambda: _palette_image(GREY), "x.png", {}, GREY / 255, 1e-6),
    "cmyk_tiff": (lambda: Image.fromarray(GREY).convert("RGB").convert("CMYK"), "x.tif", {}, GREY / 255, 1e-6),
    "cmyk_jpeg": (
        lambda: Image.fromarray(GREY).convert("RGB").convert("CMYK"), "x.jpg", {"quality": 95}, GREY / 255, 0.05
    ),
    "rgb_jpeg": (lambda: Image.fromarray(GREY).convert("RGB"), "x.jpg", {"quality": 95}, GREY / 255, 0.05),
    "webp_lossless": (lambda: Image.fromarray(GREY).convert("RGB"), "x.webp", {"lossless": True}, GREY / 255, 1e-6),
    "webp_lossy": (lambda: Image.fromarray(GREY).convert("RGB"), "x.webp", {"quality": 90}, GREY / 255, 0.05),
    "tiff_8bit": (lambda: Image.fromarray(GREY), "x.tiff", {}, GREY / 255, 1e-6),
    "tiff_16bit": (lambda: Image.fromarray(GREY.astype(np.uint16) * 257), "x.tif", {}, GREY / 255, 1e-6),
    "bmp_rgb": (lambda: Image.fromarray(GREY).convert("RGB"), "x.bmp", {}, GREY / 255, 1e-6),
}


@pytest.mark.parametrize("case", MODES)
def test_modes_read_to_grey(tmp_path: Path, case: str) -> None:
    make, name, options, expected, tolerance = MODES[case]
    make().save(tmp_path / name, **options)
    xray = read_image(tmp_path / name)
    _assert_unit_image(xray.pixels, (H, W))
    np.testing.assert_allclose(xray.pixels, expected, atol=tolerance)
    assert read_header(tmp_path / name) == xray.info == verify_image(tmp_path / name)
    assert (xray.meta.get("alpha") == "dropped") == (case in ("rgba_png", "la_png", "palette_png"))


def test_1bit_png_has_a_header_but_is_refused_as_two_grey_levels(tmp_path: Path) -> None:
    Image.fromarray(GREY > 127).save(tmp_path / "x.png")
    assert read_header(tmp_path / "x.png").mode == "1"
    with pytest.raises(ImageReadError, match="not a usable chest X-ray: 2 grey levels, under 8"):
        read_image(tmp_path / "x.png")


# --- failures ------------------------------------------------------------------------------


def _truncated_jpeg(path: Path) -> Path:
    noise = np.random.default_rng(1).integers(0, 256, (200, 200), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 6 // 10])
    return path


def _written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    # name: (make the file in a folder, how the reason starts)
    "missing": (lambda d: d / "absent.png", "file not found"),
    "empty": (lambda d: _written(d / "empty.jpg", b""), "empty file"),
    "text_named_png": (lambda d: _written(d / "t.png", b"Patient list\n"), "not an image"),
    "directory_named_png": (lambda d: _directory(d / "dir.png"), "not an image"),
    "garbage_after_jpeg_magic": (
        lambda d: _written(d / "g.jpg", b"\xff\xd8\xff" + bytes(range(256)) * 4), "corrupt or unreadable"
    ),
    "garbage_after_dicom_magic": (
        lambda d: _written(d / "g.dcm", bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI" + bytes(40)), "no pixel data"
    ),
    "dicom_without_pixels": (lambda d: _write_dicom(d / "nopix", STORED12, pixel_data=False), "no pixel data"),
    # formats lungscope does not read are named, with what to do
    "heic_photo": (lambda d: _written(d / "IMG_0001.HEIC", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64)),
                   "unsupported: a HEIC/HEIF or AVIF photo, as phones save them; save it as one of JPEG, PNG"),
    "pdf": (lambda d: _written(d / "report.pdf", b"%PDF-1.7\n" + bytes(64)), "unsupported: a PDF document; save"),
    "zip": (lambda d: _written(d / "study.png", b"PK\x03\x04" + bytes(64)),
            "unsupported: a ZIP archive; extract its images first"),
    "dicom_data_set_without_file_header": (
        lambda d: _written(d / "old.dcm", b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + bytes(64)),
        "unsupported: a DICOM data set without the DICOM file header (its preamble and 'DICM')"),
}


@pytest.mark.parametrize("case", BAD_FILES)
@pytest.mark.parametrize("function", [read_header, read_image, verify_image])
def test_bad_files_raise_image_read_error(tmp_path: Path, case: str, function: Callable) -> None:
    make, reason = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(ImageReadError) as caught:
        function(path)
    assert str(caught.value).startswith(f"{path}: ") and caught.value.reason.startswith(reason)
    assert len(caught.value.reason) > 10


@pytest.mark.parametrize("name", ["ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm", "OT-PAL-8-face.dcm"])
def test_a_real_dicom_data_set_without_its_file_header_is_named_as_such(name: str) -> None:
    """pydicom's own files written without preamble and "DICM" (little- and big-endian, explicit and implicit VR)."""
    with pytest.raises(ImageReadError, match="unsupported: a DICOM data set without the DICOM file header"):
        read_image(get_testdata_file(name))


@pytest.mark.parametrize("function", [read_image, verify_image])
def test_truncated_jpeg_and_png_are_caught(tmp_path: Path, function: Callable) -> None:
    jpeg = _truncated_jpeg(tmp_path / "cut.jpg")
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (200, 200), dtype=np.uint8)).save(tmp_path / "cut.png")
    png = tmp_path / "cut.png"
    png.write_bytes(png.read_bytes()[:-5000])
    for path in (jpeg, png):
        assert read_header(path).width == 200  # the header alone is intact
        with pytest.raises(ImageReadError, match="truncated") as caught:
            function(path)
        assert str(path) in str(caught.value)


def test_own_pixel_limit_and_no_pillow_bomb_warning(tmp_path: Path) -> None:
    Image.fromarray(GREY).save(tmp_path / "small.png")
    for function in (read_header, read_image, verify_image):
        with pytest.raises(ImageReadError, match=r"too large: 96x72 is 6,912 pixels, over the limit of 1,000"):
            function(tmp_path / "small.png", max_pixels=1000)
    big = _blank_png(tmp_path / "big.png", 9500, 9500)  # above Pillow's warning level, below ours
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_header(big).width == 9500
    assert MAX_PIXELS > 9500 * 9500


def test_huge_tiff_reads_without_pillow_bomb_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TIFF checks Pillow's bomb size again when it loads; a TIFF over that size but under ours reads quietly."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # Pillow's warning level, as if at 89 million pixels
    values = np.linspace(0, 2.5, 90 * 80, dtype=np.float32).reshape(90, 80)
    Image.fromarray(values).save(tmp_path / "f.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xray = read_image(tmp_path / "f.tif")
    np.testing.assert_allclose(xray.pixels, values / 2.5, atol=1e-6)


@pytest.mark.parametrize("side", [1100, 2000])  # reduce factors 2 and 3 at a working side of 256
def test_16bit_image_reduced_past_twice_the_working_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          side: int) -> None:
    """Pillow's reduce() refuses 16-bit modes ("image has wrong mode"): a 16-bit PNG over twice the working side
    (8,192 pixels at 2,048) must read, as a smaller one does."""
    monkeypatch.setattr(io_module, "WORKING_SIDE", 256)
    ramp = np.tile(np.linspace(0, 4095, side).astype(np.uint16), (side // 2, 1))
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    xray = read_image(tmp_path / "wide.png")
    assert xray.pixels.shape == (128, 256) and xray.meta["downscaled_from"] == (side // 2, side)
    np.testing.assert_allclose(xray.pixels[0], np.linspace(0, 1, 256), atol=0.01)  # the ramp, reduced


def test_threads_leave_warning_filters_alone(tmp_path: Path) -> None:
    """The audit verifies files from several threads; no warnings filter of ours may outlive its call."""
    files = [_blank_png(tmp_path / "b.png", 9500, 9500), _write_dicom(tmp_path / "d.dcm", STORED12)]
    before = list(warnings.filters)
    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(read_header, files * 200))
    assert warnings.filters == before
    assert {info.format for info in infos} == {"PNG", "DICOM"}


def test_huge_images_refused_without_allocating(tmp_path: Path) -> None:
    """A 20000x20000 PNG or DICOM would need gigabytes; a fresh process shows its memory never grows."""
    huge_png = _blank_png(tmp_path / "huge.png", 20000, 20000)
    mid_png = _blank_png(tmp_path / "mid.png", 9000, 9000)  # under Pillow's limits: our check must act
    huge_dcm = _write_dicom(tmp_path / "huge.dcm", STORED12, Rows=20000, Columns=20000)
    script = f"""
import json, resource
from lungscope.data.io import read_header, read_image, verify_image
from lungscope.errors import ImageReadError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
reasons = []
for path, limit in [({str(huge_png)!r}, None), ({str(huge_dcm)!r}, None), ({str(mid_png)!r}, 10_000_000)]:
    for function in (read_header, read_image, verify_image):
        try:
            function(path) if limit is None else function(path, max_pixels=limit)
            reasons.append("read")
        except ImageReadError as error:
            reasons.append(error.reason)
grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({{"reasons": reasons, "grown_mb": grown_kb / 1024}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    result = json.loads(done.stdout)
    assert len(result["reasons"]) == 9
    assert all(reason.startswith("too large") for reason in result["reasons"]), result["reasons"]
    assert result["grown_mb"] < 50, result  # decoding just the 9000x9000 one takes ~700 MB


# --- real data -------------------------------------------------------------------------------


def _first_files(folder: Path, pattern: str, count: int = 3) -> list[Path]:
    files = sorted(folder.glob(pattern))[:count]
    assert len(files) == count, f"expected images in {folder}"
    return files


@pytest.mark.parametrize(
    ("dataset", "subfolder", "pattern", "shape", "fmt"),
    [
        ("chest_xray", "train/NORMAL", "*.jpeg", (224, 224), "JPEG"),
        ("lung_masks", "images", "*.png", (256, 256), "PNG"),
    ],
)
def test_real_images(
    request: pytest.FixtureRequest, dataset: str, subfolder: str, pattern: str, shape: tuple[int, int], fmt: str
) -> None:
    for path in _first_files(request.getfixturevalue(dataset) / subfolder, pattern):
        xray = read_image(path)
        _assert_unit_image(xray.pixels, shape)
        assert xray.pixels.std() > 0.05  # a radiograph, not a blank
        assert xray.info.format == fmt and is_image_candidate(path)
        assert read_header(path) == xray.info == verify_image(path)
        assert (xray.info.height, xray.info.width) == shape


def test_every_shared_xray_passes_the_plausibility_check(chest_xray: Path, lung_masks: Path) -> None:
    """The refusal rules (lungscope.data.plausibility) against all 5,779 real X-rays: none may be refused."""
    files = sorted((chest_xray / "train").glob("*/*.jpeg")) + sorted((lung_masks / "images").glob("*.png"))
    assert len(files) == 5216 + 563

    def refusal(path: Path) -> str | None:
        try:
            read_image(path)
        except ImageReadError as error:
            return str(error)
        return None

    with ThreadPoolExecutor(2) as pool:
        assert [reason for reason in pool.map(refusal, files) if reason] == []
