"""Bundle a trained run as lungscope's default model and write its model card.

    python scripts/bundle_model.py RUN_DIR [--resamples 1000] [--shift benchmarks/results/robustness/robustness.md]
        [--check TB_CHECK.json] [--check-internal TEST_CHECK.json] [--minutes M]

Copies RUN_DIR/best.pt (weights, config, classes, operating point; read with weights_only=True) to
src/lungscope/bundled/pneumonia.pt and writes src/lungscope/bundled/MODEL_CARD.md with the run's validation and
held-out test metrics (95% CIs by bootstrap over patients), measured here by lungscope.evaluation.evaluate_run on the
run's own patient-grouped split manifest, and the adult-normal specificity (benchmarks/adult_normals.py), measured
here too. The shift benchmark's summary and the Grad-CAM lung shares (``lungscope explain-check --json`` reports)
are copied into the card from the files given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from adult_normals import SITES, called_normal, cell  # noqa: E402
from lungscope.data.datasets import scan_dataset
from lungscope.evaluation.evaluate import evaluate_run
from lungscope.evaluation.formatting import format_metric
from lungscope.inference import Classifier
from lungscope.models import count_parameters

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "src" / "lungscope" / "bundled"
ADULTS_HELD_OUT = "## Held out: adult normals in training, cross-fitted"  # a heading of --adults
NAMES = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "accuracy": "accuracy", "recall": "sensitivity (recall)",
         "specificity": "specificity", "precision": "precision", "f1": "F1", "balanced_accuracy": "balanced accuracy"}


def _table(evaluations: dict[str, dict]) -> str:
    header = "| metric | " + " | ".join(evaluations) + " |\n| --- |" + " --- |" * len(evaluations)
    rows = []
    for key, name in NAMES.items():
        cells = []
        for report in evaluations.values():
            m = report["metrics"][key]
            cells.append(format_metric(m))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return header + "\n" + "\n".join(rows)


def _section(path: Path, heading: str) -> str:
    """The text under ``heading`` in a markdown file, up to the next heading."""
    text = path.read_text()
    body = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return body.strip()


def _share(path: Path | None, what: str) -> str:
    if path is None:
        return f"{what}: not measured"
    report = json.loads(path.read_text())
    entry = report["methods"]["gradcam"]
    return (f"{what}: {entry['lung_share']:.3f} over {report['images']} images, where the lungs cover "
            f"{report['lung_area_fraction']:.3f} of the input; "
            f"randomisation Spearman {entry['randomization_spearman']:.2f}")


def _grid(classifier: Classifier) -> str:
    import torch

    from lungscope.models import gradcam_layer

    _, layer = gradcam_layer(classifier.model)
    shapes = []
    handle = layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        classifier.model(torch.zeros(1, 1, classifier.image_size, classifier.image_size))
    handle.remove()
    return "x".join(map(str, shapes[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--shift", type=Path, help="robustness.md of benchmarks/robustness.py")
    parser.add_argument("--check", type=Path, help="explain-check JSON on the TB images with their true masks")
    parser.add_argument("--check-internal", type=Path, help="explain-check JSON on internal test images")
    parser.add_argument("--minutes", type=float, help="wall-clock minutes the training took, to state in the card")
    parser.add_argument("--adults", type=Path, default=REPO / "benchmarks" / "results" / "adult_normals.md",
                        help="where the held-out adult figure of a run trained on adult normals lies")
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
    adults_dir = REPO.parent / "shared" / "data" / "lung_masks" / "images"
    normals = sorted(p for p in adults_dir.iterdir() if p.stem.endswith("_0"))
    calls = called_normal(classifier, normals)
    by_site = {name: [c for c, p in zip(calls, normals) if p.name.startswith(site)] for site, name in SITES.items()}
    adults = f"all {cell(calls)}; " + "; ".join(f"{name} {cell(c)}" for name, c in by_site.items())
    if config.get("extra_train"):  # the run trained on them: what it says of them is no test
        adults = (f"these images are in its training split (`extra_train: {config['extra_train']}`), so its own "
                  f"figure on them ({adults}) is not held out; held out, each half scored by the same recipe trained "
                  f"with the other half: {_section(args.adults, ADULTS_HELD_OUT)}")
    tb = sorted(p for p in adults_dir.iterdir() if p.stem.endswith("_1"))
    flagged = [not call for call in called_normal(classifier, tb)]
    shift = _section(args.shift, "## Mean over the ten perturbations") if args.shift else "not measured"
    minutes = f"{args.minutes:.0f} minutes of wall-clock time" if args.minutes else "time not stated"
    augmentation = ", ".join(f"{k} {v}" for k, v in (config.get("augmentation") or {}).items()) or "defaults"
    start = ("from scratch (no outside weights)" if not config.get("pretrained") else
             f"fine-tuned from `{config['pretrained']}` (lungscope's own pediatric model, configs/lungscope-cxr.yaml)")
    n_extra = len(scan_dataset(config["extra_train"], labels=config["labels"])) if config.get("extra_train") else 0
    extra = (f" and {n_extra:,} normal adult X-rays of the Montgomery and Shenzhen sets (`extra_train: "
             f"{config['extra_train']}`), labelled NORMAL, never validated or tested on" if n_extra else "")
    adult_limit = (", and on healthy adults from two others but no sick adult: it is no adult screener (use "
                   "`--model tb` for tuberculosis)" if n_extra else "")
    where = (f'{_share(args.check, "TB images with their true masks")}; '
             f'{_share(args.check_internal, "internal test images, segmenter masks")}.')
    card = f"""# Model card: lungscope's bundled pneumonia model

`src/lungscope/bundled/pneumonia.pt`, used by `lungscope predict`, `explain` and `serve` when no model is named
(`--model default`). Written by `scripts/bundle_model.py` on {datetime.date.today()}.

## Model
- Network: `{config['model']}` {config.get('model_options') or ''} ({count_parameters(classifier.model):,} parameters,
  {size_mb:.1f} MB checkpoint), {classifier.image_size}x{classifier.image_size} grayscale input squashed from the
  whole image, normalised `{config.get('normalise', 'fixed')}`; softmax over {', '.join(classifier.classes)}.
  Grad-CAM's layer (the rectified class-activation maps its head pools; logits centred over the classes) is a
  {_grid(classifier)} grid.
- Training: {start}, {config['optimizer']} lr {config['lr']}, {config['scheduler']}
  schedule, {summary['epochs_run']} epochs (best by {config['monitor']}: epoch {summary['best_epoch']}), batch
  {config['batch_size']}, class weights {config.get('class_weights')}, label smoothing {config.get('label_smoothing')},
  weight averaging (EMA decay {config.get('ema')}), lung-aware training weight {config.get('lung_focus')} (Grad-CAM
  mass outside the bundled segmenter's lung masks penalised); augmentation: {augmentation}. {minutes} on the
  project's 2-core CPU.
- Operating point (fitted on the validation split, never on test data): {classifier.operating_point.get('calibration')}
  calibration (temperature {classifier.temperature:.3f}, bias {classifier.bias[1] if classifier.bias else 0:.3f} on the
  PNEUMONIA logit); a study is called PNEUMONIA when the calibrated probability is at least {classifier.threshold:.4f}
  (rule: {classifier.operating_point.get('rule')}). A hospital should refit it on its own labelled images:
  `lungscope calibrate default --data DIR --site NAME`.
- Reproduce: `lungscope train --config configs/bundled-pneumonia.yaml --data ../shared/data/chest_xray/train --out RUN`,
  then this script.

## Data
Pediatric chest X-rays (ages 1-5) from Guangzhou Women and Children's Medical Center: the training split of Kermany
et al., Mendeley Data v2 (doi:10.17632/rscbjbr9sj.2, CC BY 4.0), 1,341 NORMAL and 3,875 PNEUMONIA images, as
resized to 224x224 RGB JPEG before they reached us. Split by patient (no patient on two sides), stratified by label:
{summary['n_train'] - n_extra:,} training images{extra}; validation {val['n_images']:,} images of
{val['n_patients']:,} patients; held-out test {test['n_images']:,} images of {test['n_patients']:,} patients. The
official test split of that data set was not available to us and is not used.

## Performance
At the operating threshold, with 95% confidence intervals from {args.resamples:,} bootstrap resamples of patients.
The test split was used for nothing but this card (models were chosen on validation and the proxies below).

{_table({f"validation ({val['n_images']:,} images)": val, f"held-out test ({test['n_images']:,} images)": test})}

Expected calibration error (10 bins) on the test split: {test['calibration']['ece_uncalibrated']:.3f} before and
{test['calibration']['ece_calibrated']:.3f} after calibration.

**Other hospitals (proxy)**: normal adult X-rays of the Montgomery and Shenzhen sets called NORMAL (95% Wilson
interval): {adults}. Adults are not the intended population; a model that has learnt lungs should still call clear
lungs clear. The adult tuberculosis films of the same sets, called PNEUMONIA: {cell(flagged)} (its label is not
theirs, but a sick adult lung called NORMAL is what a clinician must know it misses).

**Acquisition shift** (`benchmarks/robustness.py`, mean over ten perturbations at each severity, held-out test):

{shift}

**Where it looks** (Grad-CAM positive mass inside the lung fields; `lungscope explain-check`):
{where}

## Intended use and limits
- A research and teaching tool for explainable screening, **not a diagnostic device**: it has not been validated
  clinically, and a clinician decides.
- Trained on pediatric images from one hospital{adult_limit}. Adults, other hospitals, other devices, portable or
  lateral views, and findings other than pneumonia (tuberculosis, effusion, COVID-19, ...) are outside what it has
  seen; expect lower and unknown performance there, and calibrate per site.
- Bacterial and viral pneumonia are one class here.
- Its Grad-CAM maps are {_grid(classifier)}-cell guides to where the score came from, not segmentations.
"""
    (BUNDLE / "MODEL_CARD.md").write_text(card)
    print(card)


if __name__ == "__main__":
    main()
