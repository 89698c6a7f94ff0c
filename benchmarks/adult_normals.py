"""Adult-normal specificity: how many normal adult chest X-rays from other hospitals a pneumonia model calls NORMAL.

    python benchmarks/adult_normals.py MODEL [MORE ...] [--data ../shared/data/lung_masks/images] [--tta N]
        [--perturb NAME:LEVEL] [--out benchmarks/results/adult_normals.md]

The Montgomery (``MCUCXR_*``) and Shenzhen (``CHNCXR_*``) images whose names end in ``_0`` are normal studies, one per
patient, from two hospitals and devices the pediatric models never saw. Adults are not the models' population, but a
model that has learnt lungs rather than one collection's look calls clear lungs clear: the fraction called NORMAL at
the model's own operating threshold is a proxy for specificity under acquisition shift. 95% intervals: Wilson's
(images are independent patients).

``--perturb`` changes every image before the model's own preprocessing, to see what in an adult X-ray's look moves
the answer: a perturbation of ``benchmarks/robustness.py`` at that level (``gamma:0.67``), or ``clahe:CLIP``
(lungscope's :class:`~lungscope.data.transforms.Clahe`, which the model did not train with).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest

from lungscope.data.io import read_image
from lungscope.data.transforms import Clahe
from lungscope.evaluation.formatting import format_ci
from lungscope.inference import Classifier
from robustness import PERTURBATIONS, at_level

SITES = {"MCUCXR": "Montgomery (USA)", "CHNCXR": "Shenzhen (China)"}


def perturbation(spec: str) -> Callable[[np.ndarray], np.ndarray]:
    """The image change ``NAME:LEVEL`` names (see the module's docstring)."""
    name, _, level = spec.partition(":")
    try:
        value = float(level)
    except ValueError:
        raise SystemExit(f"--perturb {spec}: expected NAME:LEVEL, e.g. gamma:0.67") from None
    if name == "clahe":
        return Clahe(clip_limit=value)
    if name not in PERTURBATIONS:
        raise SystemExit(f"--perturb {spec}: unknown {name!r}; choose clahe or {', '.join(PERTURBATIONS)}")
    rng = np.random.default_rng(0)
    return lambda image: at_level(image, name, value, rng)


def called_normal(
    classifier: Classifier, paths: list[Path], perturb: Callable[[np.ndarray], np.ndarray] | None = None
) -> list[bool]:
    """Whether ``classifier`` calls each file NORMAL at its operating threshold (with its test-time augmentation),
    each image first changed by ``perturb`` if given (every file must be readable)."""
    normal = classifier.classes.index("NORMAL")
    if perturb is None:
        predictions = list(classifier.predict_files([str(p) for p in paths]))
        errors = [f"{p.path}: {p.error}" for p in predictions if p.error is not None]
        if errors:
            raise SystemExit(errors[0])
        probabilities = np.stack([p.probabilities for p in predictions])
    else:
        probabilities = classifier.predict_arrays([perturb(read_image(p).pixels) for p in paths])
    return [int(call) == normal for call in classifier.decide(probabilities)]


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
    parser.add_argument("--perturb", metavar="NAME:LEVEL", help="change each image first (see above)")
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
             + (f"; test-time augmentation, {args.tta} views per image" if args.tta > 1 else "")
             + (f"; every image changed by {args.perturb} first" if args.perturb else "") + ".",
             "", "| model | all | " + " | ".join(SITES.values()) + " |", "| --- |" + " --- |" * (1 + len(SITES))]
    perturb = perturbation(args.perturb) if args.perturb else None
    for model in args.models:
        classifier = Classifier.load(model)
        classifier.set_tta(args.tta)
        calls = called_normal(classifier, paths, perturb)
        by_site = [[c for c, p in zip(calls, paths) if p.name.startswith(site)] for site in SITES]
        extra = classifier.config.get("extra_train")
        name = f"{model} (trained with `extra_train: {extra}`: maybe on these very images)" if extra else model
        lines.append(f"| {name} | {cell(calls)} | " + " | ".join(cell(c) for c in by_site) + " |")
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
