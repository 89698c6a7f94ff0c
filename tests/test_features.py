"""Feature extraction (local engine): the vectors are what the model's head sees, rows for bad files, the contract."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lungscope.cli import main
from lungscope.data.io import read_image
from lungscope.errors import ConfigError
from lungscope.explain import layer_activations
from lungscope.features import (
    FeatureExtractor,
    FeatureWriter,
    extract_features,
    read_features,
    read_metadata,
)
from lungscope.features.parquet import writable_output
from lungscope.inference import Classifier

CORRUPT = "IM-9999-0001.jpeg"  # the made-up file of the xray_slice fixture


@pytest.fixture(scope="module")
def quick_features(quick_run: Path, xray_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "features.parquet"
    extract_features(quick_run, xray_slice, out, batch_size=4)
    return out


def test_rows_columns_and_metadata(quick_run: Path, quick_features: Path) -> None:
    frame = pd.read_parquet(quick_features)  # plain pandas reads the file
    assert list(frame.columns) == ["path", "label", "patient_id", "features", "error"]
    assert len(frame) == 21
    assert frame["label"].value_counts().to_dict() == {"NORMAL": 11, "PNEUMONIA": 10}
    assert all(Path(p).stem.startswith(pid) for p, pid in zip(frame["path"], frame["patient_id"]))
    meta = read_metadata(quick_features)
    assert meta == {
        "run": str(quick_run.absolute()), "model": "shallow-cnn", "model_options": {}, "layer": "classifier.0:input",
        "feature_dim": 64 * 31 * 31, "labels": "binary", "classes": ["NORMAL", "PNEUMONIA"], "image_size": 64,
        "checkpoint_sha256": hashlib.sha256((quick_run / "best.pt").read_bytes()).hexdigest(),
    }
    good = frame[frame["error"].isna()]
    assert all(v.dtype == np.float32 and v.shape == (meta["feature_dim"],) for v in good["features"])


def test_corrupt_file_is_an_error_row(quick_features: Path) -> None:
    frame, _ = read_features(quick_features)
    bad = frame[frame["error"].notna()]
    assert [Path(p).name for p in bad["path"]] == [CORRUPT]
    assert bad["features"].isna().all() and bad["label"].tolist() == ["NORMAL"]
    assert bad["patient_id"].tolist() == ["IM-9999"]


def test_features_are_the_input_of_the_final_linear(quick_run: Path, quick_features: Path) -> None:
    """The head applied to a stored vector gives the model's logits for that file."""
    frame, _ = read_features(quick_features)
    classifier = Classifier.load(quick_run)
    good = frame[frame["error"].isna()].head(5)
    images = torch.stack([classifier.transform(read_image(p).pixels) for p in good["path"]])
    with torch.no_grad():
        logits = classifier.model(images)
        head = classifier.model.get_submodule("classifier.0")
        from_features = head(torch.from_numpy(np.stack(good["features"].tolist())))
    torch.testing.assert_close(from_features, logits, rtol=1e-4, atol=1e-4)


def test_named_layer_is_its_pooled_output(quick_run: Path, xray_slice: Path, tmp_path: Path) -> None:
    out = tmp_path / "conv.parquet"
    run = extract_features(quick_run, xray_slice, out, layer="features.0", batch_size=8)
    frame, meta = read_features(out)
    assert (run.n_rows, run.n_failed, meta["layer"], meta["feature_dim"]) == (21, 1, "features.0", 64)
    classifier = Classifier.load(quick_run)
    good = frame[frame["error"].isna()].head(3)
    images = torch.stack([classifier.transform(read_image(p).pixels) for p in good["path"]])
    expected = layer_activations(classifier.model, images, "features.0").mean(dim=(2, 3))
    np.testing.assert_allclose(np.stack(good["features"].tolist()), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_other_label_scheme_and_bundled_model(xray_slice: Path, tmp_path: Path) -> None:
    out = tmp_path / "three.parquet"
    extract_features("default", xray_slice / "PNEUMONIA", out, labels="three-class")
    frame, meta = read_features(out)
    assert (meta["run"], meta["labels"], meta["classes"]) == ("default", "three-class", ["NORMAL", "BACTERIA", "VIRUS"])
    assert set(frame["label"]) <= {"BACTERIA", "VIRUS"} and len(frame) == 10
    assert frame["label"].tolist() == ["VIRUS" if "virus" in p else "BACTERIA" for p in frame["path"]]


def test_manifest_with_missing_file_and_made_up_image(quick_run: Path, xray_slice: Path, tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (300, 200), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    real = min((xray_slice / "PNEUMONIA").iterdir())
    pd.DataFrame({"path": [str(real), "noise.png", "gone.png"], "label": ["PNEUMONIA", "NORMAL", "NORMAL"],
                  "patient_id": ["p1", "p2", "p3"]}).to_csv(tmp_path / "list.csv", index=False)
    run = extract_features(quick_run, tmp_path / "list.csv", tmp_path / "m.parquet")
    frame = pd.read_parquet(tmp_path / "m.parquet").set_index("path")
    assert (run.n_rows, run.n_failed) == (3, 1)
    assert frame.loc[str(tmp_path / "gone.png"), "error"] == "file not found"
    assert frame.loc[str(tmp_path / "noise.png"), "patient_id"] == "p2"
    assert frame.loc[str(tmp_path / "noise.png"), "features"].shape == (run.metadata["feature_dim"],)


def test_bad_layer_names_the_valid_ones(quick_run: Path) -> None:
    with pytest.raises(ConfigError, match=r"no layer 'fc'; its layers are: features, features\.0, .*classifier\.0"):
        FeatureExtractor(Classifier.load(quick_run), "fc")


def test_interrupted_write_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "f.parquet"

    def rows():
        yield {"path": "a", "label": "NORMAL", "patient_id": "a", "features": np.ones(3, np.float32), "error": None}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), FeatureWriter(out, {"feature_dim": 3}) as writer:
        writer.write_rows(rows())
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_rows_of_the_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError), FeatureWriter(tmp_path / "f.parquet", {"feature_dim": 3}) as w:
        w.write_rows([{"path": "a", "label": None, "patient_id": None, "features": "oops", "error": None}])
    assert not (tmp_path / "f.parquet").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["no-such-run", "{data}", "--out", "{tmp}/f.parquet"], "no-such-run: checkpoint not found"),
        (["{run}", "{data}", "--out", "{tmp}/f.parquet", "--layer", "fc"], "its layers are: features, features.0"),
        (["{run}", "{tmp}/nothing", "--out", "{tmp}/f.parquet"], "no such folder or CSV manifest"),
        (["{run}", "{data}", "--out", "{tmp}/f.parquet", "--engine", "spark", "--spark-master", "bogus://x"],
         "Spark master 'bogus://x': must be yarn or start with local"),
    ],
)
def test_cli_one_line_errors(
    quick_run: Path, xray_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    arguments: list[str], message: str,
) -> None:
    (tmp_path / "file.txt").write_text("a file, not a folder")
    argv = [a.format(run=quick_run, data=xray_slice, tmp=tmp_path) for a in arguments]
    assert main(["features", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lungscope features: error: ") and message in err and err.count("\n") == 1


def test_an_output_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("a file, not a folder")
    with pytest.raises(ConfigError, match=r"f\.parquet: cannot be made: .*file\.txt is a file, not a folder"):
        writable_output(tmp_path / "file.txt" / "f.parquet")
    with pytest.raises(ConfigError, match="is a folder; give a file name"):
        writable_output(tmp_path)


def test_cli_writes_and_reports(
    quick_run: Path, xray_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sub" / "f.parquet"
    assert main(["features", str(quick_run), str(xray_slice / "PNEUMONIA"), "--out", str(out)]) == 0
    assert "wrote 10 row(s) of 61504 features (classifier.0:input)" in capsys.readouterr().out
    assert main(["features", str(quick_run), str(xray_slice), "--out", str(out), "--layer", "features.0"]) == 2
    assert read_metadata(out)["feature_dim"] == 64
