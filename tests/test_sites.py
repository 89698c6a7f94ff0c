"""Site calibration (lungscope.sites) and test-time augmentation / ensembles (lungscope.inference)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lungscope.cli import main
from lungscope.data.io import read_image
from lungscope.errors import ConfigError, DatasetError
from lungscope.inference import TTA_VIEWS, Classifier, tta_views
from lungscope.sites import calibrate_site, load_classifier, load_site


@pytest.fixture(scope="module")
def site_folder(chest_xray: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 images per class from the shared set's end (the quick run's split is drawn from all of it)."""
    root = tmp_path_factory.mktemp("site")
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir()
        for f in sorted((chest_xray / "train" / label).iterdir())[-30:]:
            shutil.copy(f, root / label / f.name)
    return root


def test_a_site_gets_its_own_operating_point_bound_to_the_model(
    quick_run: Path, site_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LUNGSCOPE_SITES", str(tmp_path / "sites"))
    record = calibrate_site(quick_run, site_folder, "st-elsewhere", n_resamples=200)
    assert record["n_images"] == 60 and record["n_per_class"] == {"NORMAL": 30, "PNEUMONIA": 30}
    for rule in ("out_of_fold", "stored_operating_point"):
        for rate in ("sensitivity", "specificity"):
            value, low, high = record[rule][rate]
            assert 0 <= low <= value <= high <= 1
    classifier = load_classifier(quick_run, site="st-elsewhere")
    point = load_site("st-elsewhere", quick_run)["operating_point"]
    assert classifier.threshold == point["threshold_calibrated"]
    assert classifier.temperature == pytest.approx(point["temperature"])
    stored = Classifier.load(quick_run)
    assert (stored.temperature, stored.threshold) != (classifier.temperature, classifier.threshold)
    # Bound to this checkpoint: another model (the bundled one) has no such site.
    with pytest.raises(ConfigError, match="calibrated for another model"):
        load_classifier("default", site="st-elsewhere")
    with pytest.raises(ConfigError, match="no site 'nowhere'"):
        load_classifier(quick_run, site="nowhere")
    with pytest.raises(ConfigError, match="site name"):
        load_site("../x", quick_run)


def test_too_few_images_are_refused(quick_run: Path, site_folder: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNGSCOPE_SITES", str(tmp_path / "sites"))
    small = tmp_path / "small"
    shutil.copytree(site_folder, small)
    for f in sorted((small / "NORMAL").iterdir())[:15]:
        f.unlink()
    with pytest.raises(DatasetError, match="15 NORMAL and 30 PNEUMONIA.*at least 20 of each"):
        calibrate_site(quick_run, small, "tiny")
    assert not (tmp_path / "sites").exists()


def test_tta_views_and_the_averaged_answer(quick_run: Path, site_folder: Path) -> None:
    batch = torch.randn(2, 1, 64, 64)
    assert tta_views(batch, 1)[0] is batch
    views = tta_views(batch, TTA_VIEWS)
    assert len(views) == TTA_VIEWS and all(v.shape == batch.shape for v in views)
    assert all(not torch.equal(v, batch) for v in views[1:])
    with pytest.raises(ConfigError, match="1 to 6 views"):
        tta_views(batch, 7)
    classifier = Classifier.load(quick_run)
    paths = [str(p) for p in sorted((site_folder / "PNEUMONIA").iterdir())[:3]]
    single = list(classifier.predict_files(paths))
    assert all(p.spread is None for p in single)
    classifier.set_tta(3)
    averaged = list(classifier.predict_files(paths))
    inputs = torch.stack([classifier.transform(read_image(p).pixels) for p in paths])
    with torch.inference_mode():
        each = np.stack([classifier.probabilities(classifier.model(v)) for v in tta_views(inputs, 3)])
    for k, prediction in enumerate(averaged):
        np.testing.assert_allclose(prediction.probabilities, each[:, k].mean(0), rtol=1e-5, atol=1e-6)
        assert prediction.spread == pytest.approx(each[:, k, 1].std(), abs=1e-6)


def test_an_ensemble_averages_its_members(quick_run: Path, site_folder: Path) -> None:
    one, two = Classifier.load(quick_run), Classifier.load(quick_run)
    with torch.no_grad():
        for parameter in two.model.parameters():
            parameter.mul_(0.5)
    paths = [str(p) for p in sorted((site_folder / "NORMAL").iterdir())[:3]]
    first, second = list(one.predict_files(paths)), list(two.predict_files(paths))
    threshold = np.mean([one.threshold, two.threshold])
    one.add_members([two])
    assert one.threshold == pytest.approx(threshold)
    for a, b, both in zip(first, second, one.predict_files(paths)):
        np.testing.assert_allclose(both.probabilities, (a.probabilities + b.probabilities) / 2, rtol=1e-5)
        assert both.spread == pytest.approx(abs(a.probabilities[1] - b.probabilities[1]) / 2, abs=1e-6)
    other = Classifier.load("default")
    other.image_size = 32
    with pytest.raises(ConfigError, match="ensemble members must share"):
        one.add_members([other])


def test_calibrate_then_predict_and_evaluate_with_the_site(
    quick_run: Path, site_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LUNGSCOPE_SITES", str(tmp_path / "sites"))
    assert main(["calibrate", str(quick_run), "--data", str(site_folder), "--site", "north", "--resamples", "100"]) == 0
    out = capsys.readouterr().out
    assert "site north: 60 images" in out and "out of fold" in out and "use it with --site north" in out
    threshold = load_site("north", quick_run)["operating_point"]["threshold_calibrated"]
    csv = tmp_path / "rows.csv"
    paths = [str(p) for p in sorted((site_folder / "NORMAL").iterdir())[:4]]
    assert main(["predict", *paths, "--model", str(quick_run), "--site", "north", "--tta", "3", "--csv", str(csv)]) == 0
    rows = pd.read_csv(csv)
    assert list(rows.columns) == ["path", "probability", "prediction", "error", "uncertainty"]
    assert ((rows["probability"] >= threshold) == (rows["prediction"] == "PNEUMONIA")).all()
    assert (rows["uncertainty"] > 0).all()
    assert main(["evaluate", str(quick_run), "--data", str(site_folder), "--site", "north", "--resamples", "50"]) == 0
    assert main(["predict", paths[0], "--model", str(quick_run), "--tta", "9"]) == 1
    assert "1 to 6 views" in capsys.readouterr().err
    assert main(["calibrate", str(quick_run), "--site", "north"]) == 1
    assert "needs both --data" in capsys.readouterr().err
