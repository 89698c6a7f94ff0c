"""The HTML evaluation report: self-contained, renders offline in a real browser, shows metrics and mistakes."""

from __future__ import annotations

import copy
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from lungscope.data.audit import audit_dataset
from lungscope.evaluation.evaluate import Evaluation, evaluate_run
from lungscope.evaluation.metrics import METRIC_NAMES
from lungscope.evaluation.report import render_report, write_report
from lungscope.training import TrainConfig, train

NASTY = '<i onmouseover="alert(1)">'


@pytest.fixture(scope="module")
def run(chest_xray: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    train(TrainConfig(data=str(chest_xray / "train"), out=str(out), model="shallow-cnn", limit=240, epochs=2, seed=3),
          progress=False)
    return out


@pytest.fixture(scope="module")
def evaluation(run: Path) -> Evaluation:
    return evaluate_run(run, run / "split.csv", split="test", n_resamples=100)


@pytest.fixture(scope="module")
def report_html(run: Path, evaluation: Evaluation, tmp_path_factory: pytest.TempPathFactory) -> Path:
    audit = audit_dataset(run / "split.csv", progress=False)
    return write_report(evaluation, tmp_path_factory.mktemp("html") / "report.html", audit=audit, examples=3)


def _section(text: str, element_id: str) -> str:
    return text.split(f'id="{element_id}"', 1)[1].split("</section>", 1)[0]


def test_report_renders_offline_with_every_image(browser_page, report_html: Path, tmp_path: Path) -> None:  # noqa: F811
    page = browser_page.open(report_html)
    n_images = page.eval_on_selector_all("img", "images => images.length")
    assert n_images >= 5  # ROC, PR, confusion, reliability, training curves (+ example thumbnails)
    assert browser_page.broken_images() == []
    assert browser_page.requests == []
    assert "Most confident false positives" in page.inner_text("body")
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as image:
        assert image.width == 1280 and image.height > 900  # the whole page, longer than one screen


def test_report_is_self_contained_and_holds_metrics_and_mistakes(report_html: Path, evaluation: Evaluation) -> None:
    text = report_html.read_text()
    assert not re.search(r'(?:src|href)="(?!data:)', text), "a resource that is not embedded"
    assert "<script" not in text and "http://" not in text and "https://" not in text
    metrics = _section(text, "metrics")
    for name in METRIC_NAMES:
        value = evaluation.report["metrics"][name]["value"]
        assert f"<td>{name.replace('_', ' ')}</td>" in metrics
        if value is not None:
            assert f">{value:.3f}<" in metrics
    assert f"threshold {evaluation.threshold:.3f}" in metrics and "threshold 0.5" in metrics

    frame = evaluation.predictions
    negative, positive = evaluation.classes
    wrong_positive = frame[(frame["label"] == negative) & (frame["prediction"] == positive)]
    wrong_negative = frame[(frame["label"] == positive) & (frame["prediction"] == negative)]
    assert len(wrong_positive) and len(wrong_negative), "the quick run should make both kinds of mistake"
    for element_id, wrong, ascending in (("false-positives", wrong_positive, False),
                                         ("false-negatives", wrong_negative, True)):
        section = _section(text, element_id)
        shown = re.findall(r"<b>([^<]+)</b>", section)
        expected = wrong.sort_values("probability", ascending=ascending, kind="stable")["path"]
        assert shown == [Path(p).name for p in expected.head(3)]
        assert section.count("<img ") == len(shown)
    assert "Audit of" in text and "Run configuration" in text and "shallow-cnn" in text


def test_text_is_escaped_and_unreadable_files_are_listed(run: Path, chest_xray: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for label, pattern in (("NORMAL", "IM-*.jpeg"), ("PNEUMONIA", "person*.jpeg")):
        (data / label).mkdir(parents=True)
        for k, source in enumerate(sorted((chest_xray / "train" / label).glob(pattern))[:4]):
            shutil.copy(source, data / label / f"{k}{NASTY}.jpeg")
    (data / "NORMAL" / f"broken{NASTY}.png").write_text("not an image")
    evaluation = evaluate_run(run, data, n_resamples=20)
    assert len(evaluation.report["unreadable"]) == 1

    text = write_report(evaluation, tmp_path / "out" / "report.html", examples=8).read_text()
    assert NASTY not in text
    assert "&lt;i onmouseover=&quot;alert(1)&quot;&gt;" in text
    assert "could not be read" in text and "broken&lt;i " in text
    assert "Audit of" not in text  # no audit given: only the counts of the scored images
    assert re.search(r"<td>scored images</td><td class=\"n\">8</td>", text)


def test_multi_class_report_shows_per_class_metrics_and_misclassifications(chest_xray: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(TrainConfig(data=str(chest_xray / "train"), out=str(run), labels="three-class", limit=90, epochs=1),
          progress=False)
    evaluation = evaluate_run(run, run / "split.csv", split="test", n_resamples=20)
    text = write_report(evaluation, tmp_path / "report.html", examples=4).read_text()
    per_class = _section(text, "per-class")
    assert all(f"<td>{name}</td>" in per_class for name in ("NORMAL", "BACTERIA", "VIRUS"))
    frame = evaluation.predictions
    wrong = frame[frame["label"] != frame["prediction"]]
    confidence = [row[f"p_{row['prediction']}"] for row in wrong.to_dict("records")]
    expected = wrong.assign(c=confidence).sort_values("c", ascending=False, kind="stable")["path"]
    assert re.findall(r"<b>([^<]+)</b>", _section(text, "misclassified")) == [Path(p).name for p in expected.head(4)]
    assert "false-positives" not in text


def test_numbers_near_1_do_not_contradict_the_call(evaluation: Evaluation) -> None:
    """A threshold of 0.9997 and an image at 0.9994 called NORMAL must not read "1.000" and "0.999"."""
    report = copy.deepcopy(evaluation.report)
    report["threshold"] = 0.99970
    report["calibration"]["bias"] = [0.0, -0.25]
    frame = evaluation.predictions.copy()
    negative, positive = report["classes"]
    missed = frame.index[frame["label"] == positive][0]
    frame.loc[missed, ["probability", "prediction"]] = [0.9994, negative]
    text = render_report(replace(evaluation, report=report, predictions=frame), examples=50)
    assert "Operating threshold 0.99970 (" in text and "threshold 1.000" not in text
    assert f"called {negative}<br>P({positive}) 0.99940<br>" in _section(text, "false-negatives")
    assert "after temperature and bias calibration (T = " in text and "temperature scaling" not in text
