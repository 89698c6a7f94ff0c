"""Batch prediction: files, folders and globs in; a CSV (and JSON) row per file out, written as it is produced."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from lungscope.data.datasets import collect_inputs
from lungscope.data.labels import decide
from lungscope.errors import ConfigError
from lungscope.evaluation.formatting import format_against, format_probability
from lungscope.inference import Classifier, Prediction
from lungscope.progress import progress_bar

CSV_COLUMNS = ["path", "probability", "prediction", "error"]
UNCERTAINTY = "uncertainty"  # with test-time augmentation or an ensemble: the spread of the probability across them


@dataclass
class PredictionRun:
    """What a batch prediction did: rows written, rows with an error."""

    n_predicted: int = 0
    n_failed: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


def _row(prediction: Prediction, classifier: Classifier, threshold: float | None) -> dict[str, Any]:
    if prediction.error is not None:
        return {"path": prediction.path, "probability": None, "prediction": None, "error": prediction.error}
    probabilities = cast(np.ndarray, prediction.probabilities)  # set when there is no error
    if len(classifier.classes) == 2 and threshold is not None:
        probability = float(probabilities[1])
    else:
        probability = float(probabilities.max())
    label = classifier.classes[int(decide(probabilities[None], threshold)[0])]
    row = {"path": prediction.path, "probability": round(probability, 6), "prediction": label, "error": None}
    if prediction.spread is not None:
        row[UNCERTAINTY] = round(prediction.spread, 6)
    return row


def resolve_threshold(classifier: Classifier, threshold: float | None) -> float | None:
    """The decision threshold a run uses: ``threshold`` if given (checked), else the model's own, else 0.5 for a
    binary model (None: the most probable class)."""
    if threshold is not None and not 0 <= threshold <= 1:
        raise ConfigError(f"threshold must be within [0, 1], not {threshold}")
    threshold = classifier.threshold if threshold is None else threshold
    return 0.5 if threshold is None and len(classifier.classes) == 2 else threshold


def file_rows(
    classifier: Classifier, files: Sequence[str], threshold: float | None, *, batch_size: int = 32,
    workers: int | None = None,
) -> Iterator[dict[str, Any]]:
    """The rows of ``files``, in order, at a threshold already resolved (:func:`resolve_threshold`)."""
    for prediction in classifier.predict_files(files, batch_size=batch_size, workers=workers):
        yield _row(prediction, classifier, threshold)


def predict_rows(
    classifier: Classifier,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    threshold: float | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    show: bool | None = None,
) -> Iterator[dict[str, Any]]:
    """One row per input file: ``path``, ``probability`` (calibrated, of the positive class for a binary model),
    ``prediction`` (at ``threshold``, default the model's own) and ``error`` (None, or why the file was not read)."""
    threshold = resolve_threshold(classifier, threshold)
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, not {batch_size}")
    files, problems = collect_inputs(inputs)
    for problem in problems:
        yield {"path": problem["path"], "probability": None, "prediction": None, "error": problem["error"]}
    with progress_bar(total=len(files), desc="predict", unit="img", show=show) as bar:
        for row in file_rows(classifier, files, threshold, batch_size=batch_size, workers=workers):
            bar.update(1)
            yield row


def predict_to_files(
    classifier: Classifier,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    csv_path: str | os.PathLike[str] | None = None,
    json_path: str | os.PathLike[str] | None = None,
    **options: Any,
) -> PredictionRun:
    """Run :func:`predict_rows`, writing each CSV row as soon as it exists (an interrupted run keeps what it
    finished) and the JSON list at the end."""
    run = PredictionRun()
    handle = None
    try:
        if csv_path is not None:
            Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
            # Closed in finally, flushed per row; a file name that is not UTF-8 is written escaped (\udcff).
            handle = open(csv_path, "w", newline="", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
            several = classifier.tta > 1 or bool(classifier.members)
            writer = csv.DictWriter(handle, CSV_COLUMNS + [UNCERTAINTY] * several)
            writer.writeheader()
        for row in predict_rows(classifier, inputs, **options):
            run.rows.append(row)
            if row["error"] is None:
                run.n_predicted += 1
            else:
                run.n_failed += 1
            if handle is not None:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
                handle.flush()
    finally:
        if handle is not None:
            handle.close()
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(run.rows, indent=2) + "\n")
    return run


def _spark_task(
    source: str, threshold: float | None, batch_size: int, workers: int | None
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """What a Spark Python worker runs on a partition of ``path, error`` rows: :func:`file_rows` of its files."""
    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from lungscope.features.spark import worker_classifier

        classifier = worker_classifier(source)
        for frame in frames:
            failed = frame["error"].notna()
            rows = [{"path": path, "error": error}
                    for path, error in zip(frame["path"][failed], frame["error"][failed])]
            rows += file_rows(classifier, frame["path"][~failed].tolist(), threshold, batch_size=batch_size,
                              workers=workers)
            for row in rows:  # the probability as Python's csv module writes it: the local engine's CSV text
                row["probability"] = None if row.get("probability") is None else str(row["probability"])
            yield pd.DataFrame(rows, columns=CSV_COLUMNS)
    return run


def predict_with_spark(
    source: str, inputs: pd.DataFrame, csv_path: Path, threshold: float | None, *,
    batch_size: int = 32, workers: int | None = None, master: str = "local[*]",
) -> tuple[int, int]:
    """Write the prediction CSV (``path, probability, prediction, error``, as the local engine writes it) for
    ``inputs`` (``path, error``: rows with an error are passed through), computed by Spark (the engine of
    :mod:`lungscope.features.spark`); returns how many rows were predicted and how many have an error."""
    from lungscope.features.spark import part_files, partitions, spark_session, staging_folder

    with spark_session(master) as spark, staging_folder(csv_path) as staging:
        table = partitions(spark, inputs, "path string, error string")
        options: dict[str, Any] = {"header": False, "quote": '"', "escape": '"', "nullValue": "", "emptyValue": "",
                   "ignoreLeadingWhiteSpace": False, "ignoreTrailingWhiteSpace": False}
        task = _spark_task(source, threshold, batch_size, workers)
        schema = ", ".join(f"{column} string" for column in CSV_COLUMNS)  # the probability as text: see _spark_task
        table.mapInPandas(task, schema).write.options(**options).csv(str(staging))
        predicted = failed = 0
        with csv_path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for part in part_files(staging, ".csv"):
                with part.open(newline="") as rows:
                    for row in csv.reader(rows):
                        writer.writerow(row)
                        failed += bool(row[3])
                        predicted += not row[3]
    return predicted, failed


def predict_archive(
    model: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    csv_path: str | os.PathLike[str],
    threshold: float | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    spark_master: str = "local[*]",
) -> PredictionRun:
    """:func:`predict_to_files` on Spark, for archives: the same CSV rows, computed by a Spark job at
    ``spark_master`` (:mod:`lungscope.features.spark`). ``model`` is a run folder, checkpoint or ``"default"``,
    loaded once per Spark Python worker. The rows are not kept in memory: ``rows`` of the result is empty."""
    from lungscope.features.extract import model_source
    from lungscope.features.parquet import writable_output

    source = model_source(model)
    threshold = resolve_threshold(Classifier.load(source), threshold)
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, not {batch_size}")
    csv_path = writable_output(csv_path)
    files, problems = collect_inputs(inputs)
    frame = pd.DataFrame([*problems, *({"path": f, "error": None} for f in files)], columns=["path", "error"])
    predicted, failed = predict_with_spark(source, frame.astype(object), csv_path, threshold, batch_size=batch_size,
                                           workers=workers, master=spark_master)
    return PredictionRun(predicted, failed)


def probability_text(row: dict[str, Any], classes: Sequence[str], threshold: float | None) -> str:
    """How a predicted row's probability reads beside its call, naming the class it is of: ``P(PNEUMONIA) = 0.9138
    (threshold 0.9145)`` for a binary model (with as many decimals as tell the two apart), ``P(BACTERIAL) = 0.812``
    for the class a multi-class model calls; its spread across views (``± 0.021``) where there is one."""
    spread = f" ± {row[UNCERTAINTY]:.3f}" if UNCERTAINTY in row else ""
    if len(classes) == 2 and threshold is not None:
        value, limit = format_against(row["probability"], threshold)
        return f"P({classes[1]}) = {value}{spread} (threshold {limit})"
    return f"P({row['prediction']}) = {format_probability(row['probability'])}{spread}"


def write_results_page(
    rows: Sequence[dict[str, Any]],
    out_html: str | os.PathLike[str],
    *,
    model: str,
    classes: Sequence[str],
    threshold: float | None,
    figures: dict[str, str] | None = None,
) -> Path:
    """A small HTML page of batch predictions, most probable first, each read as :func:`probability_text` says, with
    its explanation figure (``figures``: path -> PNG file, linked relative to the page) where there is one."""
    from html import escape

    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(rows, key=lambda r: -1.0 if r["probability"] is None else r["probability"], reverse=True)
    cards = []
    for row in ordered:
        figure = (figures or {}).get(row["path"])
        picture = (f'<img src="{escape(os.path.relpath(figure, out_html.parent))}" alt="explanation">'
                   if figure else "")
        verdict = (f'<span class="error">{escape(row["error"])}</span>' if row["error"] else
                   f'<b class="{escape(row["prediction"])}">{escape(row["prediction"])}</b> '
                   f'{escape(probability_text(row, classes, threshold))}')
        cards.append(f'<section><h2>{escape(Path(row["path"]).name)}</h2><p>{verdict}</p>{picture}</section>')
    out_html.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lungscope predictions</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2733}} section{{margin-bottom:1.5rem}}
img{{max-width:100%;border:1px solid #ddd}} .PNEUMONIA,.TUBERCULOSIS{{color:#b3261e}} .NORMAL{{color:#2e7d4f}}
.error{{color:#777}} h2{{font-size:1.05rem;margin:0}}</style></head>
<body><h1>lungscope predictions</h1>
<p>Model: {escape(model)}. {len(rows)} file(s), most probable first. A research tool, not a diagnostic device.</p>
{''.join(cards)}
</body></html>
""", encoding="utf-8", errors="backslashreplace")  # a file name that is not UTF-8 is shown escaped
    return out_html
