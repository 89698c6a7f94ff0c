"""The Spark engine (local[2], one session for the module): the same features and prediction rows as the local engine,
error rows instead of failed stages, one output file, the model loaded once per Python worker."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from lungscope.cli import main
from lungscope.features import extract_features, read_features
from lungscope.features import spark as engine
from lungscope.features.api import feature_inputs
from lungscope.inference import Classifier
from lungscope.predict import predict_archive, predict_to_files


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    """Started once for every test here; the engine's calls reuse it (an active session is left running)."""
    with engine.spark_session("local[2]", driver_memory="1g") as session:
        yield session
    assert SparkSession.getActiveSession() is None


@pytest.mark.parametrize("layer", [None, "features.0"])
def test_features_match_the_local_engine(
    spark: SparkSession, quick_run: Path, xray_slice: Path, tmp_path: Path, layer: str | None
) -> None:
    local = extract_features(quick_run, xray_slice, tmp_path / "local.parquet", layer=layer, batch_size=4)
    on_spark = extract_features(quick_run, xray_slice, tmp_path / "spark.parquet", layer=layer, batch_size=4,
                                engine="spark")
    assert on_spark.metadata == local.metadata
    assert (on_spark.n_rows, on_spark.n_failed) == (local.n_rows, local.n_failed) == (21, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.parquet", "spark.parquet"]  # no part folder left
    a = pd.read_parquet(tmp_path / "local.parquet")
    b, metadata = read_features(tmp_path / "spark.parquet")
    assert metadata == local.metadata
    assert b["path"].tolist() == a["path"].tolist()  # input order kept across partitions
    pd.testing.assert_frame_equal(a.drop(columns="features"), b.drop(columns="features"))
    good = a["error"].isna()
    difference = np.abs(np.stack(a["features"][good].tolist()) - np.stack(b["features"][good].tolist()))
    assert difference.max() < 1e-4
    assert b["features"][~good].isna().all() and b["error"][~good].str.len().gt(0).all()


def test_predict_csv_matches_the_local_engine(
    spark: SparkSession, quick_run: Path, xray_slice: Path, tmp_path: Path
) -> None:
    awkward = tmp_path / 'a, "quoted" name.jpeg'  # CSV quoting survives Spark's writer and the join of its parts
    shutil.copy(min((xray_slice / "NORMAL").iterdir()), awkward)
    inputs = [str(xray_slice), str(tmp_path / "missing.png"), str(awkward)]
    local = predict_to_files(Classifier.load(quick_run), inputs, csv_path=tmp_path / "local.csv")
    archive = predict_archive(quick_run, inputs, csv_path=tmp_path / "spark.csv", batch_size=5)
    assert (archive.n_predicted, archive.n_failed) == (local.n_predicted, local.n_failed) == (21, 2)
    a = list(csv.DictReader((tmp_path / "local.csv").open(newline="")))
    b = list(csv.DictReader((tmp_path / "spark.csv").open(newline="")))
    columns = ("path", "prediction", "error")
    assert [tuple(r[k] for k in columns) for r in b] == [tuple(r[k] for k in columns) for r in a]
    for x, y in zip(a, b):
        p, q = x["probability"], y["probability"]
        assert (p == q == "") or abs(float(p) - float(q)) < 1e-5
    errors = {Path(r["path"]).name: r["error"] for r in b if r["error"]}
    assert set(errors) == {"missing.png", "IM-9999-0001.jpeg"} and errors["missing.png"] == "file not found"


def test_cli_features_on_spark(spark: SparkSession, quick_run: Path, xray_slice: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f.parquet"
    argv = ["features", str(quick_run), str(xray_slice / "PNEUMONIA"), "--out", str(out), "--engine", "spark",
            "--spark-master", "local[2]", "--layer", "features.0"]
    assert main(argv) == 0
    assert "wrote 10 row(s) of 64 features (features.0)" in capsys.readouterr().out
    assert pd.read_parquet(out)["features"].map(len).eq(64).all()


def test_cli_predict_on_spark(spark: SparkSession, xray_slice: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.csv"
    assert main(["predict", str(xray_slice), "--engine", "spark", "--csv", str(out)]) == 2
    assert "20 predicted, 1 could not be read" in capsys.readouterr().err
    rows = list(csv.DictReader(out.open(newline="")))
    assert len(rows) == 21 and {r["prediction"] for r in rows} <= {"NORMAL", "PNEUMONIA", ""}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--explain", "gradcam", "--out", "x"], "--html, --json and --roi need --engine local"),
        (["--html", "--out", "x", "--csv", "p.csv"], "--html, --json and --roi need --engine local"),
        (["--roi", "lungs", "--csv", "p.csv"], "--html, --json and --roi need --engine local"),
        ([], "--engine spark needs --csv OUT"),
    ],
)
def test_cli_predict_on_spark_refuses(xray_slice: Path, capsys: pytest.CaptureFixture[str], options: list[str],
                                      message: str) -> None:
    assert main(["predict", str(xray_slice), "--engine", "spark", *options]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lungscope predict: error: ") and message in err and err.count("\n") == 1


def test_model_loaded_once_per_worker(quick_run: Path, xray_slice: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Spark Python worker runs per partition, run twice in this process: one load of the weights."""
    loads: list[str] = []
    real = Classifier.load

    def counted(source: str) -> Classifier:
        loads.append(source)
        return real(source)

    monkeypatch.setattr(Classifier, "load", counted)
    engine.worker_classifier.cache_clear()
    engine.worker_extractor.cache_clear()
    inputs = feature_inputs(xray_slice / "NORMAL", "binary")
    task = engine._feature_task(str(quick_run), None, 4)
    first = pd.concat(task(iter([inputs.iloc[:5]])))
    second = pd.concat(task(iter([inputs.iloc[5:]])))
    assert loads == [str(quick_run)]
    assert len(first) + len(second) == 11 and second["error"].notna().sum() == 1
    engine.worker_classifier.cache_clear()
    engine.worker_extractor.cache_clear()
