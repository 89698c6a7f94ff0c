"""The evaluation report as one self-contained HTML file: inline CSS, images as base64 PNG data URIs, no scripts and
no external resource, so it opens offline and can be mailed as it is.

Built from a small template and ``html.escape`` on every value, rather than Jinja2: the page is a handful of tables
and pictures, and lungscope does not depend on a template engine.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from PIL import Image

from lungscope.data.io import read_image
from lungscope.errors import ImageReadError
from lungscope.evaluation import plots
from lungscope.evaluation.evaluate import Evaluation
from lungscope.evaluation.formatting import describe_calibration, format_probability
from lungscope.evaluation.metrics import METRIC_NAMES

THUMBNAIL = 224  # longest side of an example image, pixels

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;max-width:1180px;margin:0 auto;
padding:24px}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #d8dde6;padding-bottom:.2em}
.sub{color:#5a6475}table{border-collapse:collapse;margin:.6em 0}th,td{padding:4px 10px;border-bottom:1px solid #e6e9ef;
text-align:left;vertical-align:top}td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}th{background:#f3f5f8}
.figs{display:flex;flex-wrap:wrap;gap:16px}.figs figure{margin:0}.figs img{max-width:540px;width:100%}
figure.wide img{max-width:1100px}figcaption{color:#5a6475;font-size:.9em}
.cards{display:flex;flex-wrap:wrap;gap:14px}.card{width:236px;border:1px solid #d8dde6;border-radius:6px;padding:6px;
font-size:.85em;overflow-wrap:anywhere}.card img{display:block;margin:0 auto 4px;image-rendering:auto}
.note{background:#fff6e0;border-left:4px solid #e0a800;padding:6px 10px;margin:.4em 0}
"""


# -- small builders ----------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value))


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric_from: int = 1) -> str:
    """An HTML table; cells from column ``numeric_from`` on are right-aligned. Every cell is escaped."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{_e(c)}</td>' if i >= numeric_from else f"<td>{_e(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{_e(alt)}"{size}>'


def _figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _thumbnail(path: str) -> bytes | None:
    """The image at ``path`` shrunk to :data:`THUMBNAIL` pixels as PNG, or None if it cannot be read."""
    try:
        pixels = read_image(path).pixels
    except ImageReadError:
        return None
    image = Image.fromarray(np.round(pixels * 255).astype(np.uint8))
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


# -- sections ----------------------------------------------------------------------------------------------------
def _data_section(report: dict[str, Any], audit: dict[str, Any] | None) -> str:
    classes = report["classes"]
    evaluated = _table(
        ["evaluated", "images", "patients", *classes],
        [["scored images", report["n_images"], report["n_patients"],
          *(report["class_counts"].get(c, 0) for c in classes)]],
    )
    parts = [f"<p>{_e(report['data'])}" + (f", split <b>{_e(report['split'])}</b>" if report.get("split") else "")
             + "</p>", evaluated]
    if audit is not None:
        names = sorted({c for s in audit["splits"].values() for c in s["classes"]})
        rows = [[split, s["n_images"], s["n_patients"], *(s["classes"].get(c, 0) for c in names),
                 f"{audit['imbalance'].get(split, 0):.2f}:1"] for split, s in audit["splits"].items()]
        parts.append(f"<p>Audit of {_e(audit['source'])}: {audit['n_images']:,} images of "
                     f"{audit['n_patients']:,} patients.</p>")
        parts.append(_table(["split", "images", "patients", *names, "imbalance"], rows))
        problems = [["unreadable files", len(audit["unreadable"])], ["duplicate groups", len(audit["duplicates"])],
                    ["patients in more than one split", len(audit["leaked_patients"])]]
        parts.append(_table(["check", "count"], problems))
    if report["unreadable"]:
        rows = [[u["path"], u["error"]] for u in report["unreadable"][:20]]
        parts.append(f"<p>{len(report['unreadable'])} file(s) could not be read and were left out"
                     f"{' (first 20)' if len(report['unreadable']) > 20 else ''}:</p>"
                     + _table(["file", "reason"], rows, numeric_from=2))
    return _section("Data", "".join(parts))


def _config_section(run_dir: Path) -> str:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return ""
    config = yaml.safe_load(path.read_text()) or {}
    rows = [[key, yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
             if isinstance(value, dict | list) else value] for key, value in config.items()]
    return _section("Run configuration", f"<p>{_e(path)}</p>" + _table(["option", "value"], rows, numeric_from=2))


def _ci(entry: dict[str, Any]) -> str:
    interval = entry.get("ci95")
    return f"{_number(interval[0])} – {_number(interval[1])}" if interval else "-"


def _metrics_section(report: dict[str, Any]) -> str:
    columns: list[tuple[str, dict[str, Any]]]
    if report["threshold"] is None:
        columns = [("largest probability", report["metrics"])]
        intro = "Multi-class: each image is called its most probable class."
    else:
        rule = report.get("operating_point", {}).get("rule", "stored")
        threshold = format_probability(report["threshold"])
        columns = [(f"threshold {threshold}", report["metrics"]), ("threshold 0.5", report["metrics_at_0_5"])]
        intro = (f"Operating threshold {threshold} ({_e(rule)}), chosen on the run's validation split; "
                 "ROC-AUC and PR-AUC do not depend on a threshold.")
    header = ["metric"] + [f"{title} {part}" for title, _ in columns for part in ("value", "95% CI")]
    rows = [[name.replace("_", " ")] + [cell for _, values in columns
                                         for cell in (_number(values[name]["value"]), _ci(values[name]))]
            for name in METRIC_NAMES]
    parts = [f"<p>{intro} Intervals: {report['n_resamples']:,} bootstrap resamples of patients.</p>",
             f'<div id="metrics">{_table(header, rows)}</div>']
    if report.get("per_class"):
        names = list(next(iter(report["per_class"].values())))
        rows = [[cls] + [f"{_number(v[n]['value'])} ({_ci(v[n])})" for n in names]
                for cls, v in report["per_class"].items()]
        header = ["class", *(name.replace("_", " ") for name in names)]
        parts.append(f'<h3>Per class (one against the rest)</h3><div id="per-class">{_table(header, rows)}</div>')
    classes = report["classes"]
    matrix = [[f"true {c}", *row] for c, row in zip(classes, report["confusion_matrix"])]
    parts.append("<h3>Confusion matrix</h3>" + _table(["", *(f"called {c}" for c in classes)], matrix))
    calibration = report["calibration"]
    parts.append(
        f"<p>Expected calibration error {_number(calibration['ece_uncalibrated'], 4)}, after "
        f"{_e(describe_calibration(calibration))} {_number(calibration['ece_calibrated'], 4)}; the metrics use the "
        f"{'calibrated' if report['calibrated'] else 'uncalibrated'} probabilities.</p>"
    )
    parts += [f'<p class="note">{_e(note)}</p>' for note in report.get("notes", [])]
    return _section("Metrics", "".join(parts))


def _figures_section(evaluation: Evaluation, run_dir: Path | None) -> str:
    figures = [
        ("ROC curve, operating point marked", plots.roc_figure(evaluation)),
        ("Precision-recall curve", plots.pr_figure(evaluation)),
        ("Confusion matrix", plots.confusion_figure(evaluation)),
        ("Reliability diagram", plots.reliability_figure(evaluation)),
    ]
    cells = [f"<figure>{_img(_figure_png(fig), title)}<figcaption>{_e(title)}</figcaption></figure>"
             for title, fig in figures]
    curves = _training_curves(run_dir) if run_dir else None
    if curves:
        caption = "Training curves (loss, validation metrics, learning rate per epoch)"
        picture = _img(curves, "training curves")
        cells.append(f'<figure class="wide">{picture}<figcaption>{caption}</figcaption></figure>')
    return _section("Plots", f'<div class="figs">{"".join(cells)}</div>')


def _training_curves(run_dir: Path) -> bytes | None:
    """The run's ``curves.png``, or the curves drawn from its ``metrics.csv``, or None."""
    if (run_dir / "curves.png").is_file():
        return (run_dir / "curves.png").read_bytes()
    if (run_dir / "metrics.csv").is_file():
        buffer = io.BytesIO()
        plots.plot_curves(run_dir / "metrics.csv", buffer)
        return buffer.getvalue()
    return None


def _cards(rows: pd.DataFrame, column: str, caption: str) -> str:
    """A thumbnail card per row: file name, true and called class, ``caption`` and the row's ``column`` value."""
    if rows.empty:
        return "<p>None.</p>"
    cards = []
    for row in rows.to_dict("records"):
        png = _thumbnail(row["path"])
        name = Path(row["path"]).name
        picture = _img(png, name) if png else "<p>(image could not be read)</p>"
        cards.append(
            f'<div class="card">{picture}<b>{_e(name)}</b><br>true {_e(row["label"])}, called {_e(row["prediction"])}'
            f'<br>{_e(caption)} {format_probability(row[column])}<br><span class="sub">{_e(row["path"])}</span></div>'
        )
    return f'<div class="cards">{"".join(cards)}</div>'


def _errors_section(evaluation: Evaluation, examples: int) -> str:
    """The most confident mistakes: false positives and negatives (binary) or misclassifications (more classes)."""
    frame, classes = evaluation.predictions, evaluation.classes
    if evaluation.threshold is not None:
        negative, positive = classes
        caption = f"P({positive})"
        wrong_positive = frame[(frame["label"] == negative) & (frame["prediction"] == positive)]
        wrong_negative = frame[(frame["label"] == positive) & (frame["prediction"] == negative)]
        fp = _cards(wrong_positive.nlargest(examples, "probability"), "probability", caption)
        fn = _cards(wrong_negative.nsmallest(examples, "probability"), "probability", caption)
        return (
            _section(f"Most confident false positives (true {negative}, called {positive})",
                     f'<div id="false-positives">{fp}</div>')
            + _section(f"Most confident false negatives (true {positive}, called {negative})",
                       f'<div id="false-negatives">{fn}</div>')
        )
    wrong = frame[frame["label"] != frame["prediction"]].copy()
    wrong["confidence"] = [row[f"p_{row['prediction']}"] for row in wrong.to_dict("records")]
    cards = _cards(wrong.nlargest(examples, "confidence"), "confidence", "P(called class)")
    return _section("Most confident misclassifications", f'<div id="misclassified">{cards}</div>')


# -- the page ----------------------------------------------------------------------------------------------------
def render_report(
    evaluation: Evaluation,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    audit: dict[str, Any] | None = None,
    examples: int = 6,
) -> str:
    """The report page as a string; see :func:`write_report`."""
    report = evaluation.report
    path = Path(run_dir) if run_dir is not None else Path(report["run"])
    path = path.parent if path.is_file() else path  # a run evaluated through its best.pt
    run: Path | None = path if path.is_dir() else None
    title = f"lungscope evaluation: {Path(report['run']).name}"
    summary = (f"Run {_e(report['run'])} on {_e(report['data'])}: {report['n_images']:,} images of "
               f"{report['n_patients']:,} patients, classes {_e(', '.join(report['classes']))}.")
    body = "".join([
        f"<h1>{_e(title)}</h1><p class='sub'>{summary}</p>",
        _data_section(report, audit),
        _config_section(run) if run else "",
        _metrics_section(report),
        _figures_section(evaluation, run),
        _errors_section(evaluation, examples),
    ])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body>{body}</body></html>\n")


def write_report(
    evaluation: Evaluation,
    out_html: str | os.PathLike[str],
    *,
    run_dir: str | os.PathLike[str] | None = None,
    audit: dict[str, Any] | None = None,
    examples: int = 6,
) -> Path:
    """Write the HTML report of ``evaluation``: data summary (``audit``, from
    :func:`~lungscope.data.audit.audit_dataset`, if given), the run's config (``run_dir``, default the evaluated
    run), metrics with 95% intervals, ROC/PR/confusion/reliability plots and training curves, and the ``examples``
    most confident false positives and false negatives as thumbnails. Returns the path written."""
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(evaluation, run_dir=run_dir, audit=audit, examples=examples), encoding="utf-8")
    return out
