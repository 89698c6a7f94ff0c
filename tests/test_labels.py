"""Label schemes, and the patients and labels that file names and class folders carry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lungscope.data.labels import LABEL_SCHEMES, canonical_label, classes_for, decide, label_for, patient_id
from lungscope.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("person123_bacteria_4.jpeg", "person123"),
        ("person1_virus_6.jpeg", "person1"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0115-0001-0002.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("NORMAL2-IM-0115-0001-0002.jpeg", "NORMAL2-IM-0115"),
        ("CHNCXR_0001_0.png", "CHNCXR_0001"),
        ("MCUCXR_0104_1.png", "MCUCXR_0104"),
        ("IM-0001-0001.JPEG", "IM-0001"),  # suffix case does not matter
        ("person3_virus_7", "person3"),  # no suffix (DICOM)
        ("data/train/PNEUMONIA/person9_bacteria_2.dcm", "person9"),  # folders are ignored
        ("scan_0001.png", None),
        ("IM-0115.jpeg", None),  # no image number after the patient
        ("person12.jpeg", None),
        ("person12_fungus_3.jpeg", None),
        ("CHNCXR_0001_2.png", None),  # the label digit is 0 or 1
        ("xperson1_bacteria_1.jpeg", None),
    ],
)
def test_patient_id(name: str, expected: str | None) -> None:
    assert patient_id(name) == expected
    assert patient_id(Path(name)) == expected


@pytest.mark.parametrize(
    ("name", "scheme", "folder", "expected"),
    [
        # binary: the class folder, else the Kermany name
        ("anything.png", "binary", "NORMAL", "NORMAL"),
        ("anything.png", "binary", "pneumonia", "PNEUMONIA"),
        ("anything.png", "binary", "Virus", "PNEUMONIA"),  # a subtype folder still means pneumonia
        ("person1_bacteria_1.jpeg", "binary", None, "PNEUMONIA"),
        ("person447_virus_921_1.jpeg", "binary", None, "PNEUMONIA"),
        ("IM-0115-0001.jpeg", "binary", None, "NORMAL"),
        ("NORMAL2-IM-1427-0001.jpeg", "binary", None, "NORMAL"),
        ("IM-0115-0001.jpeg", "binary", "PNEUMONIA", "PNEUMONIA"),  # the folder wins
        ("person1_bacteria_1.jpeg", "binary", "train", "PNEUMONIA"),  # not a class folder: the name decides
        ("CHNCXR_0001_1.png", "binary", None, None),
        ("scan.png", "binary", None, None),
        # three-class
        ("person1_bacteria_1.jpeg", "three-class", None, "BACTERIA"),
        ("person1_virus_1.jpeg", "three-class", None, "VIRUS"),
        ("person447_virus_921_1.jpeg", "three-class", "PNEUMONIA", "VIRUS"),
        ("IM-0115-0001-0002.jpeg", "three-class", None, "NORMAL"),
        ("NORMAL2-IM-1427-0001.jpeg", "three-class", None, "NORMAL"),
        ("scan.png", "three-class", "normal", "NORMAL"),
        ("scan.png", "three-class", "PNEUMONIA", None),  # pneumonia, but which kind?
        # tb
        ("CHNCXR_0001_0.png", "tb", None, "NORMAL"),
        ("CHNCXR_0002_1.png", "tb", None, "TUBERCULOSIS"),
        ("MCUCXR_0001_0.png", "tb", None, "NORMAL"),
        ("MCUCXR_0104_1.png", "tb", None, "TUBERCULOSIS"),
        ("scan.png", "tb", "Tuberculosis", "TUBERCULOSIS"),
        ("person1_bacteria_1.jpeg", "tb", None, None),
        ("IM-0115-0001.jpeg", "tb", "PNEUMONIA", None),
    ],
)
def test_label_for(name: str, scheme: str, folder: str | None, expected: str | None) -> None:
    assert label_for(name, scheme, folder) == expected
    if expected is not None:
        assert expected in classes_for(scheme)


def test_classes_for_each_scheme() -> None:
    assert classes_for("binary") == ("NORMAL", "PNEUMONIA")
    assert classes_for("three-class") == ("NORMAL", "BACTERIA", "VIRUS")
    assert classes_for("tb") == ("NORMAL", "TUBERCULOSIS")
    assert set(LABEL_SCHEMES) == {"binary", "three-class", "tb"}


@pytest.mark.parametrize("call", [lambda: classes_for("covid"), lambda: label_for("IM-0001-0001.jpeg", "Binary")])
def test_unknown_scheme_names_the_valid_ones(call) -> None:
    with pytest.raises(ConfigError, match="binary, three-class, tb"):
        call()


@pytest.mark.parametrize(
    ("value", "scheme", "expected"),
    [(" normal ", "binary", "NORMAL"), ("bacteria", "binary", "PNEUMONIA"), ("BACTERIA", "three-class", "BACTERIA"),
     ("PNEUMONIA", "three-class", None), ("TB", "tb", None), ("tuberculosis", "tb", "TUBERCULOSIS")],
)
def test_canonical_label(value: str, scheme: str, expected: str | None) -> None:
    assert canonical_label(value, scheme) == expected


def test_every_real_pneumonia_name_parses(chest_xray: Path) -> None:
    """The names alone give the folder's class and a patient, for all 5,216 files; 1,635 pneumonia patients."""
    for folder in ("NORMAL", "PNEUMONIA"):
        names = [p.name for p in (chest_xray / "train" / folder).iterdir()]
        assert names
        assert {label_for(name, "binary") for name in names} == {folder}
        patients = {patient_id(name) for name in names}
        assert None not in patients
        if folder == "PNEUMONIA":
            assert len(patients) == 1635
            assert {label_for(name, "three-class") for name in names} == {"BACTERIA", "VIRUS"}


def test_every_real_tb_name_parses(lung_masks: Path) -> None:
    names = sorted(p.name for p in (lung_masks / "images").iterdir())
    labels = [label_for(name, "tb") for name in names]
    assert labels.count("TUBERCULOSIS") == sum(name.endswith("_1.png") for name in names) > 0
    assert labels.count("NORMAL") == sum(name.endswith("_0.png") for name in names) > 0
    assert len({patient_id(name) for name in names} - {None}) == len(names) == 563


def test_one_decision_rule() -> None:
    """A binary model with a threshold calls class 1 at p[:, 1] >= threshold (a 1-D array is that column); every
    other model the most probable class."""
    binary = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    assert decide(binary, 0.4).tolist() == [0, 1, 1]  # 0.4 reaches its threshold though class 0 is likelier
    assert decide(binary[:, 1], 0.4).tolist() == [0, 1, 1]
    assert decide(binary).tolist() == [0, 1, 0]
    three = np.array([[0.2, 0.5, 0.3], [0.1, 0.2, 0.7]])
    assert decide(three, 0.1).tolist() == decide(three).tolist() == [1, 2]  # a threshold is binary only
