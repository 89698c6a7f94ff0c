"""Batch prediction: inputs of every kind, error rows that do not stop the run, rows kept on interruption."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lungscope.data.datasets import collect_inputs
from lungscope.data.io import read_image
from lungscope.errors import ConfigError
from lungscope.inference import Classifier
from lungscope.predict import predict_rows, predict_to_files, probability_text


def _dicom(path: Path, pixels: np.ndarray) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation = "DX", "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture()
def folder(chest_xray: Path, tmp_path: Path) -> Path:
    root = tmp_path / "inbox"
    (root / "nested").mkdir(parents=True)
    for f in sorted((chest_xray / "train" / "NORMAL").iterdir())[:3]:
        shutil.copy(f, root / f.name)
    for f in sorted((chest_xray / "train" / "PNEUMONIA").iterdir())[:3]:
        shutil.copy(f, root / "nested" / f.name)
    pixels = read_image(sorted((chest_xray / "train" / "NORMAL").iterdir())[0]).pixels
    _dicom(root / "nested" / "1.2.3.4", np.rint(pixels * 4095))  # a DICOM named by a UID, no extension
    (root / "corrupt.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "notes.png").write_text("not an image")
    return root


def test_folder_recursive_with_dicom_and_bad_files(quick_run: Path, folder: Path, tmp_path: Path) -> None:
    classifier = Classifier.load(quick_run)
    out = tmp_path / "predictions.csv"
    run = predict_to_files(classifier, [folder], csv_path=out, json_path=tmp_path / "p.json", batch_size=3)
    rows = list(csv.DictReader(out.open()))
    assert (run.n_predicted, run.n_failed) == (7, 2)
    assert list(rows[0]) == ["path", "probability", "prediction", "error"]
    bad = {Path(r["path"]).name: r for r in rows if r["error"]}
    assert set(bad) == {"corrupt.jpeg", "notes.png"}
    assert all(r["probability"] == "" and r["prediction"] == "" for r in bad.values())
    good = [r for r in rows if not r["error"]]
    assert any(Path(r["path"]).name == "1.2.3.4" for r in good)
    for r in good:
        probability = float(r["probability"])
        assert 0 <= probability <= 1
        assert r["prediction"] == ("PNEUMONIA" if probability >= classifier.threshold else "NORMAL")


def test_dicom_predicts_like_the_same_image_as_jpeg(quick_run: Path, folder: Path) -> None:
    classifier = Classifier.load(quick_run)
    jpeg = sorted(folder.glob("*.jpeg"))[0]
    rows = {Path(r["path"]).name: r for r in predict_rows(classifier, [jpeg, folder / "nested" / "1.2.3.4"])}
    assert rows["1.2.3.4"]["probability"] == pytest.approx(rows[jpeg.name]["probability"], abs=0.02)


def test_globs_missing_paths_and_threshold(quick_run: Path, folder: Path) -> None:
    classifier = Classifier.load(quick_run)
    files, problems = collect_inputs(
        [str(folder / "**" / "*.jpeg"), str(folder / "missing.png"), str(folder / "*.tif")]
    )
    assert len(files) == 7  # 6 real images and the corrupt one
    assert [p["error"] for p in problems] == ["file not found", "the pattern matches no file"]
    rows = list(predict_rows(classifier, files, threshold=0.0))
    assert all(r["prediction"] == "PNEUMONIA" for r in rows if r["error"] is None)
    with pytest.raises(ConfigError):
        list(predict_rows(classifier, files, threshold=1.5))


def test_interrupted_run_keeps_finished_rows(quick_run: Path, folder: Path, tmp_path: Path, monkeypatch) -> None:
    classifier = Classifier.load(quick_run)
    real = classifier.predict_files

    def interrupted(paths, **options):
        for i, prediction in enumerate(real(paths, **options)):
            if i == 4:
                raise KeyboardInterrupt
            yield prediction

    monkeypatch.setattr(classifier, "predict_files", interrupted)
    out = tmp_path / "partial.csv"
    with pytest.raises(KeyboardInterrupt):
        predict_to_files(classifier, [folder], csv_path=out)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and all(r["path"] for r in rows)


def test_cli_exit_codes_and_results_page(folder: Path, tmp_path: Path, capsys) -> None:
    from lungscope.cli import main

    out = tmp_path / "out"
    assert main(["predict", str(folder), "--csv", str(tmp_path / "p.csv"), "--explain", "gradcam", "--out", str(out),
                 "--html"]) == 2  # some files could not be read
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert sum(1 for r in rows if r["error"]) == 2 and sum(1 for r in rows if not r["error"]) == 7
    page = (out / "index.html").read_text()
    assert page.count("<section>") == 9 and page.count("_gradcam.png") == 7
    assert page.count("(threshold ") == 7  # each probability beside the threshold it was called at
    assert all((out / src.split('"')[0]).is_file() for src in page.split('<img src="')[1:])
    good = sorted(folder.glob("*.jpeg"))[1]
    assert main(["predict", str(good)]) == 0
    line = capsys.readouterr().out.splitlines()[-1]  # the call, the probability named by its class, the threshold
    assert re.fullmatch(rf"{re.escape(str(good))}: (PNEUMONIA|NORMAL), P\(PNEUMONIA\) = [0-9.]+ \(threshold [0-9.]+\)",
                        line), line
    assert main(["predict", str(good), "--explain", "gradcam"]) == 1  # --explain without --out: a usage error


def test_probability_text_names_the_class_and_tells_the_threshold_apart() -> None:
    binary = ("NORMAL", "PNEUMONIA")
    assert (probability_text({"probability": 0.914, "prediction": "NORMAL"}, binary, 0.9145)
            == "P(PNEUMONIA) = 0.9140 (threshold 0.9145)")
    assert (probability_text({"probability": 0.8, "prediction": "PNEUMONIA", "uncertainty": 0.0214}, binary, 0.4)
            == "P(PNEUMONIA) = 0.800 ± 0.021 (threshold 0.400)")
    three = ("NORMAL", "BACTERIAL", "VIRAL")
    assert probability_text({"probability": 0.61, "prediction": "VIRAL"}, three, None) == "P(VIRAL) = 0.610"
