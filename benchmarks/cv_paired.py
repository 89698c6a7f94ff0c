"""The difference in pooled out-of-fold ROC-AUC between two `lungscope cv` runs on the same folds, with its 95%
interval from a paired bootstrap: the same resampled images (one per patient in the shared TB set) score both runs.

    .venv/bin/python benchmarks/cv_paired.py CV_A CV_B [--positive TUBERCULOSIS] [--resamples 2000]

Prints AUC(A) - AUC(B) and its interval; an interval that holds 0 does not tell the runs apart.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs=2, type=Path, help="two cv output folders (each with oof_predictions.csv)")
    parser.add_argument("--positive", default="TUBERCULOSIS", help="the class whose probability is scored")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    first, second = (pd.read_csv(run / "oof_predictions.csv").set_index("path").sort_index() for run in args.runs)
    if list(first.index) != list(second.index):
        raise SystemExit("the two runs scored different images: give cv runs of the same data")
    truth = (first["label"] == args.positive).to_numpy()
    column = f"p_{args.positive}"
    a, b = first[column].to_numpy(), second[column].to_numpy()
    rng = np.random.default_rng(0)
    differences = []
    for _ in range(args.resamples):
        chosen = rng.integers(0, len(truth), len(truth))
        if truth[chosen].min() != truth[chosen].max():  # both classes drawn
            differences.append(roc_auc_score(truth[chosen], a[chosen]) - roc_auc_score(truth[chosen], b[chosen]))
    low, high = np.quantile(differences, [0.025, 0.975])
    print(f"pooled AUC {roc_auc_score(truth, a):.3f} - {roc_auc_score(truth, b):.3f} = "
          f"{roc_auc_score(truth, a) - roc_auc_score(truth, b):+.3f} (95% CI {low:+.3f} to {high:+.3f}), "
          f"{len(truth)} images, {len(differences)} resamples")


if __name__ == "__main__":
    main()
