"""Does test-time augmentation pay? The pooled out-of-fold ROC-AUC of a `lungscope cv` folder's fold models, each on
its own validation fold, with one view and with ``--tta`` views, and the paired bootstrap CI of the difference.

    .venv/bin/python benchmarks/cv_tta.py CV_DIR [--tta 6] [--labels tb] [--threads 2]

Probabilities are each fold model's calibrated ones, as ``lungscope predict`` gives them; the resamples are over
the out-of-fold images (one per patient in the TB set; over images, not patients, where a patient has several).
Prints one line.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from lungscope.data.labels import classes_for
from lungscope.inference import Classifier


def scores(cv_dir: str, views: int, positive: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels (1 = ``positive``) and positive-class probabilities of every out-of-fold image, in folds.csv order."""
    folds = pd.read_csv(f"{cv_dir}/folds.csv")
    labels, probabilities = [], []
    for k in sorted(folds["fold"].unique()):
        part = folds[folds["fold"] == k]
        classifier = Classifier.load(f"{cv_dir}/fold_{k}")
        classifier.set_tta(views)
        index = classifier.classes.index(positive)
        for prediction in classifier.predict_files(part["path"].tolist()):
            if prediction.error is not None or prediction.probabilities is None:
                raise SystemExit(f"{prediction.path}: {prediction.error}")
            probabilities.append(float(prediction.probabilities[index]))
        labels.extend((part["label"] == positive).astype(int))
    return np.asarray(labels), np.asarray(probabilities)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cv_dir", help="a `lungscope cv` output folder (folds.csv, fold_K/)")
    parser.add_argument("--tta", type=int, default=6, help="views per image (default 6)")
    parser.add_argument("--labels", default="tb", help="label scheme of the folds (default tb)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    positive = classes_for(args.labels)[1]
    y, one = scores(args.cv_dir, 1, positive)
    _, many = scores(args.cv_dir, args.tta, positive)
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(args.resamples):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() != y[i].max():
            boot.append((roc_auc_score(y[i], one[i]), roc_auc_score(y[i], many[i])))
    low, high = np.percentile(np.asarray(boot), [2.5, 97.5], axis=0)
    diff_low, diff_high = np.percentile(np.diff(np.asarray(boot), axis=1), [2.5, 97.5])
    a, b = roc_auc_score(y, one), roc_auc_score(y, many)
    print(f"{len(y)} images: one view {a:.3f} ({low[0]:.3f}-{high[0]:.3f}); {args.tta} views {b:.3f} "
          f"({low[1]:.3f}-{high[1]:.3f}); difference {b - a:+.3f} ({diff_low:+.3f} to {diff_high:+.3f})")


if __name__ == "__main__":
    main()
