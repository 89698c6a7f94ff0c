"""Patient-grouped, stratified splits and folds, and manifests, on the real pneumonia set and made-up frames."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lungscope.data.datasets import scan_dataset
from lungscope.data.splits import kfold_by_patient, load_manifest, save_manifest, split_by_patient
from lungscope.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def real(chest_xray: Path) -> pd.DataFrame:
    return scan_dataset(chest_xray / "train")


@pytest.fixture(scope="module")
def real_split(real: pd.DataFrame) -> pd.DataFrame:
    return split_by_patient(real, val=0.15, test=0.15, seed=0)


def _frame(labels_by_patient: dict[str, list[str]]) -> pd.DataFrame:
    rows = [(f"/x/{p}_{i}.png", label, p) for p, labels in labels_by_patient.items() for i, label in enumerate(labels)]
    return pd.DataFrame(rows, columns=["path", "label", "patient_id"])


def _sides_of_patients(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame.groupby("patient_id")[column].nunique()


def test_real_split_keeps_patients_together(real: pd.DataFrame, real_split: pd.DataFrame) -> None:
    assert (_sides_of_patients(real_split, "split") == 1).all()
    sides = {name: set(part["patient_id"]) for name, part in real_split.groupby("split")}
    assert set(sides) == {"train", "val", "test"}
    assert not (sides["train"] & sides["val"] or sides["train"] & sides["test"] or sides["val"] & sides["test"])
    # the frame itself is untouched and the rows keep their order
    assert set(real["split"]) == {"train"}
    pd.testing.assert_frame_equal(real_split.drop(columns="split"), real.drop(columns="split"))


def test_real_split_sizes_and_strata(real_split: pd.DataFrame) -> None:
    patients = real_split.groupby("split")["patient_id"].nunique() / real_split["patient_id"].nunique()
    assert patients.to_dict() == pytest.approx({"train": 0.70, "val": 0.15, "test": 0.15}, abs=0.005)
    images = real_split["split"].value_counts(normalize=True)
    assert images.to_dict() == pytest.approx({"train": 0.70, "val": 0.15, "test": 0.15}, abs=0.03)
    whole = (real_split["label"] == "PNEUMONIA").mean()
    whole_patients = real_split.groupby("patient_id")["label"].first().eq("PNEUMONIA").mean()
    for name, part in real_split.groupby("split"):
        assert (part["label"] == "PNEUMONIA").mean() == pytest.approx(whole, abs=0.04), name
        # stratified by patient: the share of pneumonia patients is the same on every side, up to rounding
        share = part.groupby("patient_id")["label"].first().eq("PNEUMONIA").mean()
        assert share == pytest.approx(whole_patients, abs=0.005), name


def test_real_split_is_deterministic(real: pd.DataFrame, real_split: pd.DataFrame) -> None:
    again = split_by_patient(real.sample(frac=1, random_state=3), seed=0).sort_index()  # row order does not matter
    pd.testing.assert_frame_equal(again, real_split)
    other = split_by_patient(real, seed=1)
    assert (other["split"] != real_split["split"]).mean() > 0.1


def test_real_three_class_split(chest_xray: Path) -> None:
    frame = split_by_patient(scan_dataset(chest_xray / "train", labels="three-class"), val=0.1, test=0.2, seed=7)
    assert (_sides_of_patients(frame, "split") == 1).all()
    for name, part in frame.groupby("split"):
        assert set(part["label"]) == {"NORMAL", "BACTERIA", "VIRUS"}, name


@pytest.mark.parametrize(
    ("val", "test", "sides"), [(0, 0.2, {"train", "test"}), (0.2, 0, {"train", "val"}), (0, 0, {"train"})]
)
def test_empty_sides_allowed(real: pd.DataFrame, val: float, test: float, sides: set[str]) -> None:
    frame = split_by_patient(real, val=val, test=test)
    assert set(frame["split"]) == sides
    if sides != {"train"}:
        held = frame[frame["split"] != "train"]["patient_id"].nunique() / frame["patient_id"].nunique()
        assert held == pytest.approx(0.2, abs=0.005)


@pytest.mark.parametrize(
    ("val", "test"), [(-0.1, 0.1), (0.1, 1.0), (1.0, 0.0), (0.5, 0.5), (0.6, 0.7), (float("nan"), 0.1)]
)
def test_invalid_fractions(val: float, test: float) -> None:
    with pytest.raises(ConfigError, match="val|test"):
        split_by_patient(_frame({"a": ["NORMAL"], "b": ["PNEUMONIA"]}), val=val, test=test)


def test_tiny_set_falls_back_to_unstratified(tmp_path: Path) -> None:
    frame = _frame({"a": ["NORMAL"] * 3, "b": ["NORMAL"], "c": ["NORMAL", "NORMAL"], "d": ["PNEUMONIA"]})
    with pytest.warns(UserWarning, match="not stratified"):
        split = split_by_patient(frame, val=0.25, test=0.25)
    assert (_sides_of_patients(split, "split") == 1).all()
    assert split.groupby("split")["patient_id"].nunique().to_dict() == {"train": 2, "val": 1, "test": 1}


def test_too_few_patients() -> None:
    with pytest.raises(DatasetError, match="1 patient"):
        split_by_patient(_frame({"a": ["NORMAL", "PNEUMONIA"]}))


def test_real_kfold(real: pd.DataFrame) -> None:
    folds = kfold_by_patient(real, 5, seed=0)
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    assert folds["fold"].dtype == "int64"
    assert (_sides_of_patients(folds, "fold") == 1).all()
    whole = (real["label"] == "PNEUMONIA").mean()
    for fold, part in folds.groupby("fold"):
        assert len(part) == pytest.approx(len(real) / 5, rel=0.1), fold
        assert (part["label"] == "PNEUMONIA").mean() == pytest.approx(whole, abs=0.03), fold
    pd.testing.assert_frame_equal(kfold_by_patient(real, 5, seed=0), folds)
    assert (kfold_by_patient(real, 5, seed=1)["fold"] != folds["fold"]).any()


@pytest.mark.parametrize("k", [1, 0, 2.5, True, "3"])
def test_kfold_invalid_k(k: object) -> None:
    with pytest.raises(ConfigError, match="k must be"):
        kfold_by_patient(_frame({"a": ["NORMAL"], "b": ["PNEUMONIA"]}), k)  # type: ignore[arg-type]


def test_kfold_more_folds_than_patients() -> None:
    with pytest.raises(DatasetError, match="3 folds of 2 patient"):
        kfold_by_patient(_frame({"a": ["NORMAL"], "b": ["PNEUMONIA", "PNEUMONIA"]}), 3)


def test_manifest_round_trip(real_split: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "runs" / "split.csv"
    save_manifest(real_split, path)
    assert path.read_text().splitlines()[0] == "path,label,patient_id,split"
    pd.testing.assert_frame_equal(load_manifest(path), real_split)
    # and scanning the manifest back gives the same frame, validated against the scheme
    pd.testing.assert_frame_equal(scan_dataset(path), real_split)

    folds = kfold_by_patient(real_split, 3)
    save_manifest(folds, path)
    assert path.read_text().splitlines()[0] == "path,label,patient_id,split,fold"
    pd.testing.assert_frame_equal(load_manifest(path), folds)


def test_load_manifest_keeps_text_and_resolves_paths(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("path,label,patient_id,split,fold\nimgs/a.png,NORMAL,007,train,1\n/abs/b.png,PNEUMONIA,1e3,val,0\n")
    frame = load_manifest(path)
    assert frame["path"].tolist() == [str(tmp_path / "imgs" / "a.png"), "/abs/b.png"]
    assert frame["patient_id"].tolist() == ["007", "1e3"]  # ids stay text, never numbers
    assert frame["fold"].tolist() == [1, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,label,split\na.png,NORMAL,train\n", "missing column.*patient_id"),
        ("path,label,patient_id,split,fold\na.png,NORMAL,p,train,one\n", "line 2: fold 'one' is not an integer"),
        ("path,label,patient_id,split,fold\na.png,NORMAL,p,train,1.5\n", "line 2: fold '1.5'"),
    ],
)
def test_load_manifest_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=rf"m\.csv: .*{message}"):
        load_manifest(path)


def test_load_manifest_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="absent.csv: cannot read manifest"):
        load_manifest(tmp_path / "absent.csv")


def test_save_manifest_needs_the_columns(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing column.*split"):
        save_manifest(_frame({"a": ["NORMAL"]}), tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_subsample_keeps_whole_patients_and_proportions(chest_xray) -> None:
    from lungscope.data.datasets import scan_dataset
    from lungscope.data.splits import subsample_by_patient

    frame = scan_dataset(chest_xray / "train")
    small = subsample_by_patient(frame, 500, seed=1)
    assert 400 <= len(small) <= 600
    kept = set(small["patient_id"])
    assert len(frame[frame["patient_id"].isin(kept)]) == len(small)  # every image of each kept patient
    whole = (frame["label"] == "PNEUMONIA").mean()
    assert abs((small["label"] == "PNEUMONIA").mean() - whole) < 0.05
    assert subsample_by_patient(frame, 500, seed=1).equals(small)
