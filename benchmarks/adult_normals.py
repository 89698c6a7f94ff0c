"""Adult-normal specificity: how many normal adult chest X-rays from other hospitals a pneumonia model calls NORMAL.

    python benchmarks/adult_normals.py MODEL [MORE ...] [--data ../shared/data/lung_masks/images] [--tta N]
        [--out benchmarks/results/adult_normals.md]

The Montgomery (``MCUCXR_*``) and Shenzhen (``CHNCXR_*``) images whose names end in ``_0`` are normal studies, one per
patient, from two hospitals and devices the pediatric models never saw. Adults are not the models' population, but a
model that has learnt lungs rather than one collection's look calls clear lungs clear: the fraction called NORMAL at
the model's own operating threshold is a proxy for specificity under acquisition shift. 95% intervals: Wilson's
(images are independent patients).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from scipy.stats import binomtest

from lungscope.evaluation.formatting import format_ci
from lungscope.inference import Classifier

SITES = {"MCUCXR": "Montgomery (USA)", "CHNCXR": "Shenzhen (China)"}


def called_normal(model: str, paths: list[Path], tta: int = 1) -> list[bool]:
    """Whether ``model`` calls each file NORMAL at its operating threshold, averaging ``tta`` views of each (every
    file must be readable)."""
    classifier = Classifier.load(model)
    classifier.set_tta(tta)
    normal = classifier.classes.index("NORMAL")
    calls = []
    for prediction in classifier.predict_files([str(p) for p in paths]):
        if prediction.error is not None:
            raise SystemExit(f"{prediction.path}: {prediction.error}")
        calls.append(int(classifier.decide(prediction.probabilities[None])[0]) == normal)
    return calls


def cell(calls: list[bool]) -> str:
    k, n = sum(calls), len(calls)
    interval = binomtest(k, n).proportion_ci(method="wilson")
    return f"{format_ci(k / n, interval.low, interval.high)}, {k}/{n}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="run folders, checkpoints or 'default'")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lung_masks/images"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tta", type=int, default=1, help="test-time augmentation: views per image (as predict)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/adult_normals.md"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = sorted(p for p in args.data.iterdir() if p.stem.endswith("_0"))
    if not paths:
        raise SystemExit(f"{args.data}: no normal (_0) images")
    lines = ["# Adult-normal specificity", "",
             "`python benchmarks/adult_normals.py " + " ".join(sys.argv[1:]) + "`", "",
             "Fraction of normal adult X-rays called NORMAL at each model's operating threshold, 95% Wilson interval"
             + (f"; test-time augmentation, {args.tta} views per image." if args.tta > 1 else "."),
             "", "| model | all | " + " | ".join(SITES.values()) + " |", "| --- |" + " --- |" * (1 + len(SITES))]
    for model in args.models:
        calls = called_normal(model, paths, args.tta)
        by_site = [[c for c, p in zip(calls, paths) if p.name.startswith(site)] for site in SITES]
        lines.append(f"| {model} | {cell(calls)} | " + " | ".join(cell(c) for c in by_site) + " |")
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
