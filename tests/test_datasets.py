"""Scanning folders and manifests into labelled frames, and the torch dataset, on real and made-up data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lungscope.data.datasets import XRayDataset, find_images, scan_dataset
from lungscope.errors import ConfigError, DatasetError


def _png(path: Path, value: int = 128, size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)
    return path


def _csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _counts(frame: pd.DataFrame) -> dict[tuple[str, str], int]:
    return {key: int(n) for key, n in frame.groupby(["split", "label"]).size().items()}


# --- the real data -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(chest_xray: Path) -> pd.DataFrame:
    return scan_dataset(chest_xray / "train")


def test_real_class_folders(real: pd.DataFrame, chest_xray: Path) -> None:
    assert list(real.columns) == ["path", "label", "patient_id", "split"]
    assert _counts(real) == {("train", "NORMAL"): 1341, ("train", "PNEUMONIA"): 3875}
    assert real["path"].is_unique and real["path"].is_monotonic_increasing
    assert all(Path(p).is_absolute() for p in real["path"])
    assert {Path(p).parent.name for p in real["path"][real["label"] == "NORMAL"]} == {"NORMAL"}
    pneumonia = real[real["label"] == "PNEUMONIA"]
    assert pneumonia["patient_id"].nunique() == 1635  # as the data's README says
    assert real.loc[real["path"].str.endswith("person447_virus_921_1.jpeg"), "patient_id"].tolist() == ["person447"]


def test_real_split_folder_layout_gives_the_same_frame(real: pd.DataFrame, chest_xray: Path) -> None:
    # chest_xray/ holds the split folder train/, which holds the class folders: layout (b).
    pd.testing.assert_frame_equal(scan_dataset(chest_xray), real)


def test_real_three_class(chest_xray: Path) -> None:
    frame = scan_dataset(chest_xray / "train", labels="three-class")
    counts = frame["label"].value_counts().to_dict()
    assert counts == {"BACTERIA": 2530, "NORMAL": 1341, "VIRUS": 1345}
    assert counts["BACTERIA"] + counts["VIRUS"] == 3875
    assert all(("_bacteria_" in p) == (label == "BACTERIA") for p, label in zip(frame["path"], frame["label"]))


def test_real_tb_flat_folder(lung_masks: Path) -> None:
    images = lung_masks / "images"
    frame = scan_dataset(images, labels="tb")
    assert set(frame["split"]) == {"images"}
    normal, tb = len(list(images.glob("*_0.png"))), len(list(images.glob("*_1.png")))
    assert (normal, tb) == (287, 276)
    assert frame["label"].value_counts().to_dict() == {"NORMAL": normal, "TUBERCULOSIS": tb}
    assert frame["patient_id"].nunique() == 563 == len(frame)
    assert frame["patient_id"].str.fullmatch(r"(CHN|MCU)CXR_\d{4}").all()


def test_real_tb_names_have_no_pneumonia_label(lung_masks: Path) -> None:
    with pytest.raises(DatasetError, match=r"563 of 563 files have no binary label.*CHNCXR_0001_0\.png"):
        scan_dataset(lung_masks / "images", labels="binary")


def test_dataset_reads_real_images(real: pd.DataFrame) -> None:
    rows = pd.concat([real.head(2), real.tail(2)])  # two NORMAL, two PNEUMONIA
    dataset = XRayDataset(rows, ("NORMAL", "PNEUMONIA"))
    assert len(dataset) == 4
    assert dataset.targets == [0, 0, 1, 1]
    image, target = dataset[3]
    assert target == 1
    assert image.dtype == torch.float32 and image.shape == (1, 224, 224)
    assert 0 <= image.min() < image.max() <= 1

    halve = XRayDataset(rows, ("PNEUMONIA", "NORMAL"), transform=lambda a: torch.from_numpy(a[::2, ::2].copy())[None])
    small, target = halve[0]
    assert target == 1  # NORMAL is class 1 here
    assert small.shape == (1, 112, 112)
    assert torch.equal(small, dataset[0][0][:, ::2, ::2])


# --- made-up layouts -------------------------------------------------------------------------------


def test_kaggle_split_folders(tmp_path: Path) -> None:
    root = tmp_path / "chest_xray"
    _png(root / "train" / "NORMAL" / "IM-0001-0001.png")
    _png(root / "train" / "NORMAL" / "IM-0001-0002.png")
    _png(root / "train" / "PNEUMONIA" / "person1_bacteria_1.png")
    _png(root / "val" / "NORMAL" / "NORMAL2-IM-0001-0001.png")
    _png(root / "test" / "PNEUMONIA" / "person2_virus_3.png")
    _png(root / "test" / "PNEUMONIA" / "scan 7.png")  # a name without a patient: its own patient
    _png(root / "__MACOSX" / "train" / "NORMAL" / "._IM-0001-0001.png")  # zip residue, ignored
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0")
    (root / "train" / "notes.txt").write_text("not an image")

    frame = scan_dataset(root)
    assert _counts(frame) == {
        ("test", "PNEUMONIA"): 2,
        ("train", "NORMAL"): 2,
        ("train", "PNEUMONIA"): 1,
        ("val", "NORMAL"): 1,
    }
    by_name = {Path(p).name: pid for p, pid in zip(frame["path"], frame["patient_id"])}
    assert by_name == {
        "IM-0001-0001.png": "IM-0001",
        "IM-0001-0002.png": "IM-0001",
        "person1_bacteria_1.png": "person1",
        "NORMAL2-IM-0001-0001.png": "NORMAL2-IM-0001",
        "person2_virus_3.png": "person2",
        "scan 7.png": "scan 7",
    }
    three = scan_dataset(root, labels="three-class", strict=False)  # "scan 7.png": pneumonia, but which kind?
    assert three["label"].value_counts().to_dict() == {"NORMAL": 3, "BACTERIA": 1, "VIRUS": 1}


def test_class_folders_split_is_the_folder_name(tmp_path: Path) -> None:
    root = tmp_path / "my xrays"
    _png(root / "normal" / "a.png")
    _png(root / "Pneumonia" / "b.png")
    _png(root / "Pneumonia" / "2024" / "c.png")  # deeper folders below a class folder are fine
    frame = scan_dataset(root)
    assert frame[["label", "patient_id", "split"]].values.tolist() == [
        ["PNEUMONIA", "c", "my xrays"],
        ["PNEUMONIA", "b", "my xrays"],
        ["NORMAL", "a", "my xrays"],
    ]


def test_flat_folder_labels_from_names(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for name in ("CHNCXR_0001_0.png", "CHNCXR_0002_1.png", "MCUCXR_0003_1.png"):
        _png(root / name)
    frame = scan_dataset(root, labels="tb")
    assert frame[["label", "patient_id", "split"]].values.tolist() == [
        ["NORMAL", "CHNCXR_0001", "images"],
        ["TUBERCULOSIS", "CHNCXR_0002", "images"],
        ["TUBERCULOSIS", "MCUCXR_0003", "images"],
    ]


def test_unlabelled_files_are_named_not_dropped(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _png(root / "IM-0001-0001.png")
    _png(root / "person5_virus_9.png")
    _png(root / "mystery.png")
    with pytest.raises(DatasetError, match=r"1 of 3 files have no binary label.*mystery\.png"):
        scan_dataset(root)
    frame, skipped = scan_dataset(root, strict=False, with_skipped=True)
    assert frame["label"].tolist() == ["NORMAL", "PNEUMONIA"]
    assert [Path(s["path"]).name for s in skipped] == ["mystery.png"]
    assert "no binary label" in skipped[0]["error"]


def test_manifest_with_patient_and_split(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a, b = _png(data / "a.png"), _png(data / "sub" / "b.png")
    c = _png(tmp_path / "elsewhere" / "person3_virus_1.png")
    manifest = _csv(
        data / "list.csv",
        f"path,label,patient_id,split\na.png,normal,P1,train\nsub/b.png,PNEUMONIA,P1,train\n{c},Virus,P2,test\n",
    )
    frame = scan_dataset(manifest)
    assert frame.values.tolist() == [
        [str(a), "NORMAL", "P1", "train"],  # relative paths resolved against the CSV's folder
        [str(b), "PNEUMONIA", "P1", "train"],
        [str(c), "PNEUMONIA", "P2", "test"],  # VIRUS means PNEUMONIA under the binary scheme
    ]


def test_manifest_without_patient_and_split(tmp_path: Path) -> None:
    _png(tmp_path / "IM-0007-0001.png")
    _png(tmp_path / "IM-0007-0002.png")
    _png(tmp_path / "x1.png")
    manifest = _csv(
        tmp_path / "cohort.csv", "path,label\nIM-0007-0001.png,NORMAL\nIM-0007-0002.png,NORMAL\nx1.png,TUBERCULOSIS\n"
    )
    frame = scan_dataset(manifest, labels="tb")
    assert frame["patient_id"].tolist() == ["IM-0007", "IM-0007", "x1"]  # parsed from the name, else the stem
    assert set(frame["split"]) == {"cohort"}  # no split column: the CSV's name
    assert frame["label"].tolist() == ["NORMAL", "NORMAL", "TUBERCULOSIS"]


def test_manifest_empty_cells_fall_back(tmp_path: Path) -> None:
    _png(tmp_path / "person4_bacteria_2.png")
    manifest = _csv(tmp_path / "m.csv", "path,label,patient_id,split\nperson4_bacteria_2.png,PNEUMONIA,,\n")
    assert scan_dataset(manifest)[["patient_id", "split"]].values.tolist() == [["person4", "m"]]


def test_manifest_bad_label(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    manifest = _csv(tmp_path / "m.csv", "path,label\na.png,NORMAL\na.png,COVID\na.png,covid\n")
    message = r"m\.csv: line 3: unknown label 'COVID' \(and 1 more rows\).*NORMAL, PNEUMONIA"
    with pytest.raises(DatasetError, match=message):
        scan_dataset(manifest)


def test_manifest_missing_columns(tmp_path: Path) -> None:
    manifest = _csv(tmp_path / "m.csv", "file,patient_id\na.png,1\n")
    with pytest.raises(DatasetError, match=r"m\.csv: missing column\(s\) path, label"):
        scan_dataset(manifest)


def test_manifest_missing_file(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    manifest = _csv(tmp_path / "m.csv", "path,label\na.png,NORMAL\ngone.png,PNEUMONIA\n")
    with pytest.raises(DatasetError, match=r"1 of 2 files listed do not exist.*gone\.png"):
        scan_dataset(manifest)
    frame, skipped = scan_dataset(manifest, strict=False, with_skipped=True)
    assert frame["label"].tolist() == ["NORMAL"]
    assert skipped == [{"path": str(tmp_path / "gone.png"), "error": "file not found"}]


@pytest.mark.parametrize("content", ["", "path,label\n"])
def test_manifest_without_rows(tmp_path: Path, content: str) -> None:
    with pytest.raises(DatasetError, match=r"m\.csv"):
        scan_dataset(_csv(tmp_path / "m.csv", content))


def test_empty_folder(tmp_path: Path) -> None:
    empty = tmp_path / "nothing here"
    (empty / "NORMAL").mkdir(parents=True)
    (empty / "NORMAL" / "notes.txt").write_text("no image")
    with pytest.raises(DatasetError, match=r"nothing here: no images found"):
        scan_dataset(empty)


def test_missing_source_and_other_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere: no such folder or CSV manifest"):
        scan_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"a\.png: neither a folder nor a CSV manifest"):
        scan_dataset(_png(tmp_path / "a.png"))
    with pytest.raises(ConfigError, match="valid schemes"):
        scan_dataset(tmp_path, labels="covid")


def test_symlinks_out_of_the_tree_are_reported_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "set"
    inside = _png(root / "NORMAL" / "IM-0001-0001.png")
    outside = _png(tmp_path / "private" / "IM-0002-0001.png")
    _png(tmp_path / "private" / "PNEUMONIA" / "person9_virus_1.png")
    (root / "NORMAL" / "IM-0002-0001.png").symlink_to(outside)  # a file link leaving the tree
    (root / "PNEUMONIA").symlink_to(tmp_path / "private" / "PNEUMONIA")  # a folder link leaving the tree
    (root / "NORMAL" / "IM-0003-0001.png").symlink_to(root / "NORMAL" / "deleted.png")  # broken
    (root / "NORMAL" / "IM-0001-0001-copy.png").symlink_to(inside)  # inside the tree: used
    (root / "mirror").symlink_to(root / "NORMAL")  # a folder link inside the tree: not entered twice

    images, skipped = find_images(root)
    assert [p.name for p in images] == ["IM-0001-0001-copy.png", "IM-0001-0001.png"]
    assert {Path(s["path"]).name: s["error"].split(" (")[0] for s in skipped} == {
        "IM-0002-0001.png": f"symlink points outside {root.resolve()}",
        "PNEUMONIA": f"symlink points outside {root.resolve()}",
        "IM-0003-0001.png": "broken symlink",
    }
    frame, reported = scan_dataset(root, with_skipped=True)
    assert frame["path"].tolist() == [str(p) for p in images]
    assert reported == skipped


def test_dataset_rejects_labels_outside_the_classes(tmp_path: Path) -> None:
    frame = pd.DataFrame({"path": [str(_png(tmp_path / "a.png"))], "label": ["VIRUS"]})
    with pytest.raises(DatasetError, match=r"'VIRUS' not among the classes NORMAL, PNEUMONIA"):
        XRayDataset(frame, ("NORMAL", "PNEUMONIA"))
    with pytest.raises(DatasetError, match="lacks column.*label"):
        XRayDataset(frame.drop(columns="label"), ("NORMAL",))
