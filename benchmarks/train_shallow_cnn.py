"""Time a full training run of a shipped config and report its validation AUC with a 95% patient-bootstrap CI.

The issue's target: `configs/shallow-cnn-64.yaml` on ../shared/data/chest_xray/train reaches validation AUC >= 0.95 on
its patient-grouped validation split in under 5 minutes on this 2-core CPU.

    .venv/bin/python benchmarks/train_shallow_cnn.py [--config configs/shallow-cnn-64.yaml] [--target-seconds 300]

Writes benchmarks/results/<config stem>.md and prints the same table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from lungscope.evaluation import patient_bootstrap
from lungscope.evaluation.formatting import format_ci
from lungscope.inference import Classifier
from lungscope.training import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "shallow-cnn-64.yaml")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "chest_xray" / "train")
    parser.add_argument("--out", type=Path, help="run folder (default: a temporary folder)")
    parser.add_argument("--target-seconds", type=float, default=300.0)
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="lungscope-bench-")) / "run"
    config = TrainConfig.from_yaml(args.config, data=str(args.data), out=str(out))
    started = time.perf_counter()
    summary = train(config)
    wall = time.perf_counter() - started

    split = pd.read_csv(out / "split.csv")
    val = split[split["split"] == "val"].reset_index(drop=True)
    classifier = Classifier.load(out)
    positive = classifier.classes.index("PNEUMONIA")
    scores = [p.probabilities[positive] for p in classifier.predict_files(val["path"].tolist())]
    labels = (val["label"] == "PNEUMONIA").astype(int).to_numpy()
    auc, low, high = patient_bootstrap(roc_auc_score, labels, scores, val["patient_id"], n_resamples=1000)

    command = f"python benchmarks/train_shallow_cnn.py --config {args.config.relative_to(REPO)}"
    lines = [
        f"# Training benchmark: {args.config.name}",
        "",
        f"{datetime.date.today()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}). Command: `{command}`",
        "",
        "| quantity | value |",
        "| --- | --- |",
        f"| model | {config.model} at "
        f"{config.image_size or classifier.image_size}x{config.image_size or classifier.image_size} |",
        f"| images (train / validation, patient-grouped) | {summary['n_train']:,} / {summary['n_val']:,} "
        f"({val['patient_id'].nunique():,} validation patients) |",
        f"| epochs run (best) | {summary['epochs_run']} ({summary['best_epoch']}) |",
        f"| wall time, decoding included | {wall:.1f} s = {wall / args.target_seconds:.2f} x the "
        f"{args.target_seconds:.0f} s target |",
        f"| validation ROC-AUC (best checkpoint) | {format_ci(auc, low, high, decimals=4)} "
        "(95% CI, 1,000 patient resamples) |",
        f"| AUC at the best epoch in metrics.csv | {summary['best_val_auc']:.4f} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"train-{args.config.stem}.md").write_text(text)


if __name__ == "__main__":
    main()
