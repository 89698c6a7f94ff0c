"""The dataset audit on the real pneumonia set and on made-up collections."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from lungscope.data.audit import audit_dataset, find_duplicates
from test_predict import _dicom

REAL_COUNTS = {"NORMAL": 1341, "PNEUMONIA": 3875}


def _png(path: Path, value: int, size: tuple[int, int] = (96, 72)) -> Path:
    """A horizontal ramp from ``value`` up: the same ``value`` and size give the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.broadcast_to(np.linspace(value, value + 100, size[0]).astype(np.uint8), size[::-1])).save(path)
    return path


@pytest.fixture(scope="module")
def real_report(chest_xray: Path) -> dict:
    return audit_dataset(chest_xray, progress=False)


def test_real_set_counts(real_report: dict) -> None:
    assert real_report["n_images"] == sum(REAL_COUNTS.values())
    assert list(real_report["splits"]) == ["train"]
    train = real_report["splits"]["train"]
    assert train["classes"] == REAL_COUNTS
    # 1,635 pneumonia patients (README of the shared data) plus the normal ones: far fewer patients than images.
    assert 1635 < train["n_patients"] < train["n_images"]
    assert real_report["unreadable"] == []
    assert real_report["leaked_patients"] == {}
    assert real_report["sizes"] == {"224x224": 5216}
    assert real_report["imbalance"]["train"] == pytest.approx(3875 / 1341, abs=1e-3)
    json.dumps(real_report)  # JSON-ready


def test_real_leak_names_exactly_the_moved_patient(chest_xray: Path, tmp_path: Path) -> None:
    source = chest_xray / "train"
    normals = sorted((source / "NORMAL").iterdir())[:20]
    person = sorted((source / "PNEUMONIA").glob("person1_*"))
    others = sorted((source / "PNEUMONIA").glob("person2*"))[:20]
    assert len(person) >= 2, "patient person1 has several images in the shared set"
    for f in normals + others + person[:-1]:
        (tmp_path / "train" / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tmp_path / "train" / f.parent.name / f.name)
    (tmp_path / "test" / "PNEUMONIA").mkdir(parents=True)
    shutil.copy(person[-1], tmp_path / "test" / "PNEUMONIA" / person[-1].name)

    report = audit_dataset(tmp_path, progress=False)
    assert set(report["splits"]) == {"train", "test"}
    assert list(report["leaked_patients"]) == ["person1"]
    assert len(report["leaked_patients"]["person1"]) == len(person)
    assert report["splits"]["test"] == {"n_images": 1, "n_patients": 1, "classes": {"PNEUMONIA": 1}}


def test_bad_files_duplicates_and_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "collection"
    _png(root / "NORMAL" / "IM-0001-0001.png", 10)
    _png(root / "NORMAL" / "IM-0002-0001.png", 20, size=(80, 80))
    dup = _png(root / "PNEUMONIA" / "person1_bacteria_1.png", 30)
    shutil.copy(dup, root / "PNEUMONIA" / "person2_bacteria_2.png")
    (root / "PNEUMONIA" / "person3_virus_3.png").write_text("not an image")
    (root / "PNEUMONIA" / "person4_virus_4.png").write_bytes(b"")
    outside = _png(tmp_path / "elsewhere" / "person9_virus_9.png", 40)
    (root / "PNEUMONIA" / "person9_virus_9.png").symlink_to(outside)

    report = audit_dataset(root, progress=False)
    assert report["splits"]["collection"]["classes"] == {"NORMAL": 2, "PNEUMONIA": 4}
    bad = {Path(u["path"]).name: u["error"] for u in report["unreadable"]}
    assert set(bad) == {"person3_virus_3.png", "person4_virus_4.png"}
    assert all(bad.values())
    assert [[Path(p).name for p in group] for group in report["duplicates"]] == [
        ["person1_bacteria_1.png", "person2_bacteria_2.png"]
    ]
    assert [Path(s["path"]).name for s in report["skipped"]] == ["person9_virus_9.png"]
    assert report["sizes"] == {"96x72": 3, "80x80": 1}
    assert report["modes"] == {"L": 4}


def test_a_lateral_dicom_in_a_training_folder_is_listed(tmp_path: Path) -> None:
    """The audit lists what predict would refuse by a DICOM header: a lateral view among frontal ones."""
    root = tmp_path / "collection"
    frontal = _png(root / "NORMAL" / "IM-0001-0001.png", 10)
    for name, view in (("IM-0002-0001.dcm", "PA"), ("IM-0003-0001.dcm", "LL")):
        ds = pydicom.dcmread(_dicom(root / "NORMAL" / name, np.asarray(Image.open(frontal), np.float64) * 16))
        ds.ViewPosition = view
        ds.save_as(root / "NORMAL" / name)
    report = audit_dataset(root, progress=False)
    assert [(Path(u["path"]).name, u["error"]) for u in report["unreadable"]] == [(
        "IM-0003-0001.dcm", "not a usable chest X-ray: the DICOM header says ViewPosition LL (a lateral view); "
                            "lungscope reads frontal (PA or AP) chest radiographs")]


def test_find_duplicates_ignores_same_size_different_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 100)
    b.write_bytes(b"y" * 100)
    assert find_duplicates([str(a), str(b)]) == []
    b.write_bytes(b"x" * 100)
    assert find_duplicates([str(a), str(b)]) == [[str(a), str(b)]]
