"""Hostile input: every bad file gets a correct answer or one line naming it and the reason; nothing hangs, crashes,
answers NaN, loses the good rows beside it, or takes memory by what a header declares. The files are made here."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from lungscope.data.audit import audit_dataset
from lungscope.data.datasets import collect_inputs
from lungscope.data.io import read_image
from lungscope.errors import ImageReadError
from lungscope.inference import Classifier
from lungscope.predict import predict_rows

REPO = Path(__file__).resolve().parents[1]
MAX_RSS_BYTES = 1.5 * 2**30


# --- building hostile files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def xray(chest_xray: Path) -> np.ndarray:
    """A real X-ray from the shared data, 8-bit grey."""
    path = min((chest_xray / "train" / "PNEUMONIA").iterdir())
    return np.asarray(Image.open(path).convert("L"))


def _png_rows(path: Path, width: int, height: int, row: bytes, bit_depth: int = 8) -> Path:
    """A genuine grey PNG of ``height`` equal rows, compressed row by row (a 10000x10000 one is ~100 KB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(b"\x00" + row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _jpeg_bytes(image: Image.Image, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _liar_jpeg(path: Path, xray: np.ndarray) -> Path:
    """A 64x64 JPEG whose frame header says 9999x9999: libjpeg fills the rest with grey, without an error."""
    data = bytearray(_jpeg_bytes(Image.fromarray(xray).resize((64, 64))))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 9999, 9999)
    path.write_bytes(bytes(data))
    return path


def _dataset(stored: np.ndarray, syntax: str, **attributes: object) -> Dataset:
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    file_meta.MediaStorageSOPInstanceUID = generate_uid()
    file_meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = file_meta
    ds.SOPClassUID, ds.SOPInstanceUID = file_meta.MediaStorageSOPClassUID, file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    return ds


def _dicom(path: Path, stored: np.ndarray, syntax: str = ExplicitVRLittleEndian, **attributes: object) -> Path:
    dcmwrite(path, _dataset(stored, syntax, **attributes), enforce_file_format=True)
    return path


def _deflate_bomb(path: Path, xray: np.ndarray, zeros: int = 64 * 2**20) -> Path:
    """A valid deflated DICOM of an honest 12-bit X-ray followed by a private element of ``zeros`` zero bytes: a
    file of a few hundred KB that inflates to far more than its pixels need."""
    stored = xray.astype(np.uint16) * 16
    meta = _dicom(path, stored, DeflatedExplicitVRLittleEndian).read_bytes()
    meta = meta[: 144 + struct.unpack("<I", meta[140:144])[0]]  # preamble, DICM and the file meta group
    plain = _dicom(path, stored).read_bytes()
    body = plain[144 + struct.unpack("<I", plain[140:144])[0] :]  # the data set, uncompressed
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(body + struct.pack("<HH2sHI", 0x7FE1, 0x0010, b"OB", 0, zeros))]
    block = bytes(2**24)
    parts += [compressor.compress(block) for _ in range(zeros // len(block))]
    path.write_bytes(meta + b"".join(parts) + compressor.flush())
    return path


def _tiff_float(path: Path, xray: np.ndarray, bad: float) -> Path:
    values = xray.astype(np.float32) / 255
    values[10, 10] = bad
    Image.fromarray(values, mode="F").save(path)
    return path


def _make(kind: str, folder: Path, xray: np.ndarray) -> Path:
    """One hostile (or good) file of ``kind`` in ``folder``."""
    grey = Image.fromarray(xray)
    path = folder / {"dicom-nan-slope": "nan.dcm", "dicom-no-pixels": "nopix.dcm", "deflated-bomb": "bomb.dcm",
                     "deflated-valid": "deflated.dcm", "deflated-huge-rows": "rows.dcm", "tiff-nan": "nan.tif",
                     "tiff-inf": "inf.tif", "multi-frame-tiff": "frames.tif", "animated-gif": "anim.gif"}.get(
        kind, f"{kind}.{'jpg' if 'jpeg' in kind else 'png'}")
    if kind == "zero-byte-jpeg":
        path.write_bytes(b"")
    elif kind == "text-jpeg":
        path.write_text("this is not an image\n")
    elif kind == "truncated-jpeg":
        path.write_bytes(_jpeg_bytes(grey)[:3000])
    elif kind == "truncated-png":
        grey.save(path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "liar-jpeg":
        _liar_jpeg(path, xray)
    elif kind == "png-bomb":
        _png_rows(path, 10_000, 10_000, bytes(10_000))
    elif kind == "one-pixel":
        Image.new("L", (1, 1), 128).save(path)
    elif kind == "two-black":
        Image.new("L", (2, 2), 0).save(path)
    elif kind == "one-by-100000":
        _png_rows(path, 100_000, 1, bytes(range(256)) * 390 + bytes(160))
    elif kind == "wide-strip":
        grey.resize((400, 64)).save(path)
    elif kind == "blank-white":
        Image.new("L", (512, 512), 255).save(path)
    elif kind == "nearly-blank":
        image = np.full((512, 512), 255, np.uint8)
        image[:10, :10] = 0  # 0.04 % of the pixels: a standard deviation of 0.02, above MIN_STD
        Image.fromarray(image).save(path)
    elif kind == "dithered-png":
        grey.convert("1").save(path)  # Floyd-Steinberg dithering: from afar the X-ray, in black and white only
    elif kind == "posterised-png":
        Image.fromarray((xray // 64 * 85).astype(np.uint8)).save(path)  # 4 greys
    elif kind == "tiff-nan":
        _tiff_float(path, xray, np.nan)
    elif kind == "tiff-inf":
        _tiff_float(path, xray, np.inf)
    elif kind == "dicom-nan-slope":
        _dicom(path, xray.astype(np.uint16) * 16, RescaleSlope="NaN", RescaleIntercept=0)
    elif kind == "dicom-no-pixels":
        _dicom(path, xray.astype(np.uint16))
        ds = _dataset(xray.astype(np.uint16), ExplicitVRLittleEndian)
        del ds.PixelData
        dcmwrite(path, ds, enforce_file_format=True)
    elif kind == "deflated-bomb":
        _deflate_bomb(path, xray)
    elif kind == "deflated-valid":
        _dicom(path, xray.astype(np.uint16) * 16, DeflatedExplicitVRLittleEndian)
    elif kind == "deflated-huge-rows":
        _dicom(path, np.zeros((1, 1), np.uint16), DeflatedExplicitVRLittleEndian)
        ds = _dataset(np.zeros((1, 1), np.uint16), DeflatedExplicitVRLittleEndian)
        ds.Rows, ds.Columns = 60_000, 60_000  # 3.6 billion pixels declared, 2 bytes of pixel data
        dcmwrite(path, ds, enforce_file_format=True)
    elif kind == "sixteen-bit-12-bit-png":
        Image.fromarray(np.rint(xray * (4095 / 255)).astype(np.uint16)).save(path)
    elif kind == "cmyk-jpeg":
        path.write_bytes(_jpeg_bytes(grey.convert("CMYK"), quality=95))
    elif kind == "palette-alpha-png":
        grey.convert("P").save(path, transparency=0)
    elif kind == "animated-gif":
        grey.save(path, save_all=True, append_images=[grey.rotate(90)])
    elif kind == "multi-frame-tiff":
        grey.save(path, save_all=True, append_images=[Image.new("L", grey.size, 0)])
    elif kind == "exif-rotated-jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6  # shown turned 90 degrees clockwise
        path.write_bytes(_jpeg_bytes(Image.fromarray(np.rot90(xray, 1)), quality=95, exif=exif))
    elif kind == "real-jpeg":
        path.write_bytes(_jpeg_bytes(grey, quality=95))
    else:
        raise AssertionError(kind)
    return path


# kind -> the start of the reason read_image gives (None: read, and equal to the X-ray within 2/255 on average)
CASES: dict[str, str | None] = {
    "zero-byte-jpeg": "empty file (0 bytes)",
    "text-jpeg": "not an image",
    "truncated-jpeg": "truncated",
    "truncated-png": "truncated",
    "liar-jpeg": "truncated: ",
    "png-bomb": "not a usable chest X-ray: blank",
    "one-pixel": "not a usable chest X-ray: 1x1 pixels, under 64 on a side",
    "two-black": "not a usable chest X-ray: 2x2 pixels, under 64 on a side",
    "one-by-100000": "not a usable chest X-ray: 100000x1 pixels, under 64 on a side",
    "wide-strip": "not a usable chest X-ray: 400x64 pixels, an aspect ratio beyond 1:3",
    "blank-white": "not a usable chest X-ray: blank",
    "nearly-blank": "not a usable chest X-ray: nearly blank: 100.0% of the pixels have one grey value",
    "dithered-png": "not a usable chest X-ray: 2 grey levels, under 8",
    "posterised-png": "not a usable chest X-ray: 4 grey levels, under 8",
    "tiff-nan": "non-finite pixel values (NaN/inf)",
    "tiff-inf": "non-finite pixel values (NaN/inf)",
    "dicom-nan-slope": "non-finite pixel values (NaN/inf)",
    "dicom-no-pixels": "no pixel data",
    "deflated-bomb": "too large: the deflated data inflates past",
    "deflated-huge-rows": "too large: 60000x60000x1 frames is 3,600,000,000 pixels",
    "animated-gif": "unsupported: a GIF image; save it as one of JPEG, PNG, TIFF, WebP, BMP or DICOM",
    "deflated-valid": None,
    "sixteen-bit-12-bit-png": None,
    "cmyk-jpeg": None,
    "palette-alpha-png": None,
    "multi-frame-tiff": None,
    "exif-rotated-jpeg": None,
    "real-jpeg": None,
}
BAD = [kind for kind, reason in CASES.items() if reason]
GOOD = [kind for kind, reason in CASES.items() if reason is None]


@pytest.fixture(scope="module")
def hostile(xray: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    return {kind: _make(kind, folder, xray) for kind in CASES}


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load("default")


def _within(seconds: float, function: Callable[[], Any]) -> Any:
    """``function()``'s result, failing the test (not hanging it) when it takes longer than ``seconds``."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(function()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s: it hangs"
    return result[0]


# --- read_image: each file alone ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", BAD)
def test_bad_file_is_one_reason_naming_the_file(hostile: dict[str, Path], kind: str) -> None:
    with pytest.raises(ImageReadError) as caught:
        read_image(hostile[kind])
    assert caught.value.reason.startswith(CASES[kind]), caught.value.reason
    assert str(caught.value) == f"{hostile[kind]}: {caught.value.reason}"
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("kind", GOOD)
def test_awkward_but_good_file_reads_as_the_xray(hostile: dict[str, Path], xray: np.ndarray, kind: str) -> None:
    pixels = read_image(hostile[kind]).pixels
    assert pixels.shape == xray.shape and np.isfinite(pixels).all()
    assert np.abs(pixels - xray / 255).mean() < 2 / 255


def test_12bit_png_without_sbit_reads_like_the_8bit_xray(hostile: dict[str, Path], xray: np.ndarray) -> None:
    np.testing.assert_allclose(read_image(hostile["sixteen-bit-12-bit-png"]).pixels, xray / 255, atol=1 / 255)


def test_implausible_images_raise_the_dedicated_error(hostile: dict[str, Path]) -> None:
    from lungscope.data.plausibility import ImplausibleImageError

    for kind in ("one-pixel", "two-black", "one-by-100000", "blank-white", "png-bomb"):
        with pytest.raises(ImplausibleImageError):
            read_image(hostile[kind])


def test_declared_size_does_not_set_the_working_size(tmp_path: Path, xray: np.ndarray) -> None:
    """A 6000x5000 JPEG is decoded at a reduced DCT scale and returned at most 2048 on a side, aspect kept."""
    big = tmp_path / "big.jpg"
    big.write_bytes(_jpeg_bytes(Image.fromarray(xray).resize((6000, 5000))))
    read = read_image(big)
    assert (read.info.width, read.info.height) == (6000, 5000)
    assert read.pixels.shape == (1707, 2048) and read.meta["downscaled_from"] == (5000, 6000)


# --- the folder verbs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(hostile: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every hostile file, plus a symlink loop, a folder link loop, a dangling link and two FIFOs."""
    root = tmp_path_factory.mktemp("folder") / "NORMAL"
    root.mkdir()
    for kind, path in hostile.items():
        if kind not in ("png-bomb", "deflated-bomb"):  # kept for the single-file checks: slow to decode twice
            os.link(path, root / path.name)
    (root / "loop-a.png").symlink_to(root / "loop-b.png")
    (root / "loop-b.png").symlink_to(root / "loop-a.png")
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(root)  # a folder link back up: must not recurse
    (root / "dangling.jpg").symlink_to(root / "deleted.jpg")
    os.mkfifo(root / "fifo.jpg")
    os.mkfifo(root / "fifo")
    return root.parent  # the class folder NORMAL below it labels every file for the audit


EXTRA = {"loop-a.png": "symlink loop", "loop-b.png": "symlink loop", "dangling.jpg": "broken symlink",
         "fifo.jpg": "not a regular file", "fifo": "not a regular file"}


IN_FOLDER_BAD = [kind for kind in BAD if kind not in ("png-bomb", "deflated-bomb", "animated-gif")]  # .gif: no image


def _expected_errors(hostile: dict[str, Path]) -> dict[str, str]:
    return {**{hostile[kind].name: CASES[kind] for kind in IN_FOLDER_BAD}, **EXTRA}


def test_predict_folder_keeps_good_rows_beside_bad_ones(
    folder: Path, hostile: dict[str, Path], classifier: Classifier
) -> None:
    rows = _within(120, lambda: list(predict_rows(classifier, [folder], show=False)))
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    expected = _expected_errors(hostile)
    assert set(errors) == set(expected)
    for name, start in expected.items():
        assert errors[name].startswith(start), (name, errors[name])
    good = {Path(r["path"]).name: r for r in rows if not r["error"]}
    assert set(good) == {hostile[kind].name for kind in GOOD}
    assert all(np.isfinite(r["probability"]) and r["prediction"] in classifier.classes for r in good.values())
    reference = good[hostile["real-jpeg"].name]["probability"]
    assert abs(good[hostile["sixteen-bit-12-bit-png"].name]["probability"] - reference) < 0.05


def test_audit_lists_every_bad_file_as_unreadable(folder: Path, hostile: dict[str, Path]) -> None:
    report = _within(120, lambda: audit_dataset(folder, progress=False))
    unreadable = {Path(u["path"]).name: u["error"] for u in report["unreadable"]}
    expected = _expected_errors(hostile)
    assert set(unreadable) == set(expected)
    for name, start in expected.items():
        assert unreadable[name].startswith(start), (name, unreadable[name])


def test_unlistable_folder_is_reported(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as root, whom chmod 000 does not stop: the refusal is emulated at os.scandir."""
    locked = folder / "NORMAL" / "sub"
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    files, problems = collect_inputs([folder])
    assert {"path": str(locked), "error": "permission denied: the folder cannot be listed"} in problems
    assert len(files) == len(GOOD) + len(IN_FOLDER_BAD)  # the rest still found


def test_fifo_named_on_the_command_line_is_not_opened(folder: Path) -> None:
    fifos = folder / "NORMAL"
    files, problems = _within(10, lambda: collect_inputs([fifos / "fifo.jpg", str(fifos / "fifo")]))
    assert files == []
    assert [p["error"] for p in problems] == ["not a regular file (a FIFO, socket or device): not opened"] * 2


# --- names of outputs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def awkward_names(xray: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A 248-character name and two files of one stem in different folders, different X-rays."""
    root = tmp_path_factory.mktemp("names")
    (root / "a").mkdir()
    (root / "b").mkdir()
    paths = [root / ("x" * 244 + ".png"), root / "a" / "same.png", root / "b" / "same.png"]
    Image.fromarray(xray).save(paths[0])
    Image.fromarray(xray).save(paths[1])
    Image.fromarray(np.fliplr(xray)).save(paths[2])
    return paths


def test_stems_are_unique_short_and_stable(awkward_names: list[Path]) -> None:
    from lungscope.data.naming import unique_stems

    stems = unique_stems(awkward_names)
    assert len(set(stems)) == 3 and all(len(s.encode()) <= 109 for s in stems)
    assert stems == unique_stems([str(p) for p in awkward_names])
    assert unique_stems([Path("/x/IM-1.png"), Path("/y/IM-2.png")]) == ["IM-1", "IM-2"]  # unique stems are kept
    assert len(set(unique_stems([Path("/x/ab.png"), Path("/y/AB.png")]))) == 2  # case-insensitive file systems


def test_segment_writes_every_mask_and_never_overwrites(awkward_names: list[Path], tmp_path: Path) -> None:
    from lungscope.segmentation.files import segment_files

    result = segment_files(awkward_names, tmp_path, progress=False)
    assert result["failed"] == [] and len(set(result["written"])) == 3
    masks = [np.asarray(Image.open(p)) for p in result["written"]]
    assert all(m.shape == (224, 224) for m in masks) and not np.array_equal(masks[1], masks[2])


def test_segment_reports_a_mask_it_could_not_write(
    awkward_names: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    from lungscope.segmentation.files import segment_files

    monkeypatch.setattr(cv2, "imwrite", lambda *_: False)  # what OpenCV does on a full disk: no exception
    result = segment_files(awkward_names[:1], tmp_path, progress=False)
    assert result["written"] == []
    assert [f["error"].split(" ")[:2] for f in result["failed"]] == [["cannot", "write"]]


def test_explain_long_names_and_same_stems(awkward_names: list[Path], tmp_path: Path) -> None:
    from lungscope.explain.files import explain_files

    result = explain_files("default", awkward_names, tmp_path, device="cpu", progress=False)
    assert result["failed"] == [] and result["images"] == 3 and len(set(result["written"])) == 3
    sizes = {Image.open(p).size for p in result["written"]}
    assert sizes == {(1200, 440)}
    with np.load(result["maps"]) as maps:
        assert len(maps.files) == 3


# --- the API -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(classifier: Classifier) -> TestClient:
    from lungscope.serve.app import create_app

    return TestClient(create_app(classifier))


API_BAD = ["one-pixel", "two-black", "blank-white", "tiff-nan", "dicom-nan-slope", "liar-jpeg", "png-bomb",
           "deflated-bomb", "truncated-jpeg"]


@pytest.mark.parametrize("endpoint", ["/api/predict", "/api/explain"])
@pytest.mark.parametrize("kind", API_BAD)
def test_api_refuses_bad_upload_with_one_line(client: TestClient, hostile: dict[str, Path], kind: str,
                                              endpoint: str) -> None:
    path = hostile[kind]
    response = client.post(endpoint, files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 400
    assert response.json()["detail"].startswith(f"{path.name}: {CASES[kind]}")
    assert "\n" not in response.json()["detail"]


def test_api_answers_a_real_xray(client: TestClient, hostile: dict[str, Path]) -> None:
    path = hostile["deflated-valid"]
    answer = client.post("/api/predict", files={"file": (path.name, path.read_bytes())}).json()
    assert 0 <= answer["probability"] <= 1 and answer["prediction"] in ("NORMAL", "PNEUMONIA")


def test_api_explains_a_large_image_at_the_working_size(client: TestClient, xray: np.ndarray) -> None:
    data = _jpeg_bytes(Image.fromarray(xray).resize((5000, 4000)))
    response = client.post("/api/explain", files={"file": ("large.jpg", data)})
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (2048, 1638)


# --- the CLI: one line, exit code, memory -----------------------------------------------------------------


def test_cli_predict_png_bomb_one_line_exit_2_bounded_memory(hostile: dict[str, Path], tmp_path: Path) -> None:
    """The 10000x10000 PNG (~100 KB) in a subprocess: its peak resident memory stays under 1.5 GB."""
    script = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run([sys.executable, '-m', 'lungscope.cli', 'predict', sys.argv[1]],"
        " capture_output=True, text=True, timeout=240)\n"
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.stdout.write(done.stdout)\nsys.stderr.write(done.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", script, str(hostile["png-bomb"])], capture_output=True, text=True,
                          timeout=300, env=env, check=True)
    code, rss_kb = map(int, done.stdout.splitlines()[0].split())
    assert code == 2
    line = f"{hostile['png-bomb']}: {CASES['png-bomb']}: the pixel standard deviation is 0.0000, under 0.01"
    assert done.stdout.splitlines()[1:] == [line]
    assert "Traceback" not in done.stderr
    assert rss_kb * 1024 < MAX_RSS_BYTES, f"peak {rss_kb / 2**20:.2f} GB"


def test_cli_reads_past_a_nonconformant_dicom_without_pydicom_warnings(tmp_path: Path) -> None:
    """pydicom warns of an invalid IS value ('1A') and prints its source line; the user gets the file's one line."""
    bad = get_testdata_file("badVR.dcm")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "lungscope.cli", "predict", bad], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 2
    assert done.stdout.splitlines() == [f"{bad}: corrupt or unreadable: invalid literal for int() with base 10: '1A'"]
    assert done.stderr.splitlines() == ["0 predicted, 1 could not be read"]


def test_file_name_that_is_not_utf8_is_written_escaped_not_a_crash(xray: np.ndarray, tmp_path: Path) -> None:
    """Linux allows any bytes in a name; predict's console line, CSV, JSON and page show it escaped, and a newline in
    a name does not break the one line per file."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(xray).save(os.fsdecode(bytes(folder) + b"/bad\xffname.png"), format="PNG")
    Image.fromarray(xray).save(folder / "two\nlines.png", format="PNG")
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "lungscope.cli", "predict", str(folder)]
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONUTF8": "0"}  # stdout strict about surrogates, as on most hosts
    printed = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert printed.returncode == 0, printed.stderr
    assert "bad\\udcffname.png: " in printed.stdout and "Traceback" not in printed.stderr
    assert "two\\nlines.png: " in printed.stdout and len(printed.stdout.splitlines()) == 2
    files = [*argv, "--csv", str(out / "p.csv"), "--json", str(out / "p.json"), "--out", str(out), "--html"]
    written = subprocess.run(files, capture_output=True, text=True, timeout=300, env=env)
    assert written.returncode == 0, written.stderr
    assert "bad\\udcffname.png," in (out / "p.csv").read_text()
    assert "bad\\udcffname.png" in (out / "index.html").read_text()
    assert [row["error"] for row in json.loads((out / "p.json").read_text())] == [None, None]
