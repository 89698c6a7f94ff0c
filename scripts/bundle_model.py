"""Bundle a trained run as lungscope's default model and write its model card.

    python scripts/bundle_model.py RUN_DIR [--resamples 1000]

Copies RUN_DIR/best.pt (weights, config, classes, operating point; read with weights_only=True) to
src/lungscope/bundled/pneumonia.pt and writes src/lungscope/bundled/MODEL_CARD.md with the run's validation and
held-out test metrics (95% CIs by bootstrap over patients), measured here by lungscope.evaluation.evaluate_run on the
run's own patient-grouped split manifest.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
from pathlib import Path

import yaml

from lungscope.evaluation.evaluate import evaluate_run
from lungscope.inference import Classifier
from lungscope.models import count_parameters

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "src" / "lungscope" / "bundled"
NAMES = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "accuracy": "accuracy", "recall": "sensitivity (recall)",
         "specificity": "specificity", "precision": "precision", "f1": "F1", "balanced_accuracy": "balanced accuracy"}


def _table(evaluations: dict[str, dict]) -> str:
    header = "| metric | " + " | ".join(evaluations) + " |\n| --- |" + " --- |" * len(evaluations)
    rows = []
    for key, name in NAMES.items():
        cells = []
        for report in evaluations.values():
            m = report["metrics"][key]
            cells.append(f"{m['value']:.3f} ({m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return header + "\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()

    config = yaml.safe_load((args.run / "config.yaml").read_text())
    summary = json.loads((args.run / "summary.json").read_text())
    manifest = args.run / "split.csv"
    reports = {}
    for split in ("val", "test"):
        evaluation = evaluate_run(args.run, manifest, split=split, calibrated=True, n_resamples=args.resamples)
        reports[split] = evaluation.report
    BUNDLE.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.run / "best.pt", BUNDLE / "pneumonia.pt")
    classifier = Classifier.load(BUNDLE / "pneumonia.pt")
    size_mb = (BUNDLE / "pneumonia.pt").stat().st_size / 1e6
    val, test = reports["val"], reports["test"]
    card = f"""# Model card: lungscope's bundled pneumonia model

`src/lungscope/bundled/pneumonia.pt`, used by `lungscope predict` and `lungscope serve` when no model is named
(`--model default`). Written by `scripts/bundle_model.py` on {datetime.date.today()}.

## Model
- Network: `{config['model']}` ({count_parameters(classifier.model):,} parameters, {size_mb:.1f} MB checkpoint),
  {classifier.image_size}x{classifier.image_size} grayscale input, squashed from the full image; softmax over
  {', '.join(classifier.classes)}.
- Operating point (fitted on the validation split, never on test data): calibration by temperature
  {classifier.temperature:.3f} and bias {classifier.bias[1] if classifier.bias else 0:.3f} on the PNEUMONIA logit (Platt
  scaling); a study is called PNEUMONIA when the calibrated probability is at least {classifier.threshold:.3f}
  (the threshold maximising Youden's J on validation).
- Reproduce: `lungscope train --config configs/bundled-pneumonia.yaml --data ../shared/data/chest_xray/train --out RUN`,
  then `python scripts/bundle_model.py RUN`. The CPU run is deterministic for its seed; best epoch {summary['best_epoch']}
  of {summary['epochs_run']}.

## Data
Pediatric chest X-rays (ages 1-5) from Guangzhou Women and Children's Medical Center: the training split of Kermany
et al., Mendeley Data v2 (doi:10.17632/rscbjbr9sj.2, CC BY 4.0), 1,341 NORMAL and 3,875 PNEUMONIA images, as
resized to 224x224 RGB JPEG before they reached us. Split by patient (no patient on two sides), stratified by label:
{summary['n_train']:,} training images; validation {val['n_images']:,} images of {val['n_patients']:,} patients;
held-out test {test['n_images']:,} images of {test['n_patients']:,} patients. The official test split of that data set
was not available to us and is not used.

## Performance
At the operating threshold, with 95% confidence intervals from {args.resamples:,} bootstrap resamples of patients.
The test split was used for nothing but this table.

{_table({f"validation ({val['n_images']:,} images)": val, f"held-out test ({test['n_images']:,} images)": test})}

Expected calibration error (10 bins) on the test split: {test['calibration']['ece_uncalibrated']:.3f} before and
{test['calibration']['ece_calibrated']:.3f} after calibration (temperature and bias fitted on validation; the
probabilities `predict` reports are the calibrated ones).

## Intended use and limits
- A research and teaching tool for explainable screening, **not a diagnostic device**: it has not been validated
  clinically, and a clinician decides.
- Trained on pediatric images from one hospital. Adults, other hospitals, other devices, portable or lateral views,
  and findings other than pneumonia (tuberculosis, effusion, COVID-19, ...) are outside what it has seen; expect
  lower and unknown performance there.
- Bacterial and viral pneumonia are one class here.
- 64x64 input: a small, fast network (CPU speed was a design goal); its Grad-CAM maps are coarse guides to where
  the score came from, not segmentations. See `lungscope explain-check` for how far each map can be trusted.
"""
    (BUNDLE / "MODEL_CARD.md").write_text(card)
    print(card)


if __name__ == "__main__":
    main()
