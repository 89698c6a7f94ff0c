"""The orientation check on the X-rays of its held-out patients (never trained on), shown in each of the eight
orientations: how many it refuses, with 95% Clopper-Pearson intervals, its time per image, and what the bundled
classifiers answer to the same X-rays when nothing refuses them.

    .venv/bin/python benchmarks/orientation.py [--check PATH] [--threads 1]

Prints Markdown tables; results in benchmarks/results/orientation.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest

from lungscope.data.io import read_image
from lungscope.inference import Classifier
from lungscope.orientation import ORIENTATIONS, REFUSE_AT, OrientationCheck, describe, orient, refused
from robustness import PERTURBATIONS, at_level, perturbed

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _share(count: int, total: int) -> str:
    low, high = binomtest(count, total).proportion_ci(0.95)
    return f"{count}/{total} = {count / total:.3f} ({low:.3f}-{high:.3f})"


def _batched(answer: Callable[[list[np.ndarray]], np.ndarray], images: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([answer(images[i:i + 64]) for i in range(0, len(images), 64)])


def _name(index: int) -> str:
    return "upright, as is" if index == 0 else describe(index).split(";")[0].removeprefix("it looks ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", default="default", help="orientation-check checkpoint (default: the bundled one)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    check = OrientationCheck.load(args.check)
    names = check.info["test_images"]
    children = {n: next((SHARED / "chest_xray" / "train").glob(f"*/{n}")) for n in names if n.endswith(".jpeg")}
    adults = {n: SHARED / "lung_masks" / "images" / n for n in names if n.endswith(".png")}
    groups = {"children": [read_image(p).pixels for p in children.values()],
              "adults": [read_image(p).pixels for p in adults.values()]}
    print(f"check: {args.check} (best epoch {check.info['epoch']}); held-out patients' X-rays: {len(children)} "
          f"children, {len(adults)} adults; refused when one wrong orientation has probability >= {REFUSE_AT}\n")
    print("| shown | children refused | adults refused |\n| --- | --- | --- |")
    for k in range(len(ORIENTATIONS)):
        cells = []
        for images in groups.values():
            shown = [orient(torch.from_numpy(x), k).numpy() for x in images]
            cells.append(_share(int(refused(_batched(check.probabilities, shown)).sum()), len(shown)))
        print(f"| {_name(k)} | {' | '.join(cells)} |")

    print("\nUpright held-out X-rays changed as in `benchmarks/robustness.py` (its harshest level, and tilts beyond "
          "it): refused\n\n| change | children refused | adults refused |\n| --- | --- | --- |")
    changes = [(name, lambda x, i, name=name: perturbed(x, name, 3, i), f"{levels[-1]:g} ({unit})")
               for name, (_, levels, unit) in PERTURBATIONS.items()]
    changes += [("rotation", lambda x, i, d=d: at_level(x, "rotation", d, np.random.default_rng(i)), f"{d} (degrees)")
                for d in (20.0, 30.0)]
    for name, change, level in changes:
        cells = []
        for images in groups.values():
            cells.append(_share(sum(check.problem(change(x, i)) is not None for i, x in enumerate(images)),
                                len(images)))
        print(f"| {name} {level} | {' | '.join(cells)} |")

    one = groups["children"][0]
    check.probabilities([one])
    started = time.perf_counter()
    for _ in range(50):
        check.probabilities([one])
    print(f"\nCPU time per image (one at a time, {args.threads} thread(s)): "
          f"{(time.perf_counter() - started) / 50 * 1000:.1f} ms\n")

    labels = np.array(["PNEUMONIA" in str(p) for p in children.values()])
    for model, images, truth, positive in (("default", groups["children"], labels, "PNEUMONIA"),
                                           ("tb", groups["adults"], np.array([n.endswith("_1.png") for n in adults]),
                                            "TB")):
        classifier = Classifier.load(model)
        print(f"`--model {model}` on the same held-out X-rays, nothing refused: share called {positive}\n")
        print(f"| shown | truly negative ({(~truth).sum()}) | truly positive ({truth.sum()}) |\n| --- | --- | --- |")
        for k in (0, *range(1, len(ORIENTATIONS))):
            shown = [orient(torch.from_numpy(x), k).numpy() for x in images]
            probabilities = _batched(classifier.predict_arrays, shown)
            called = classifier.decide(probabilities) == len(classifier.classes) - 1
            print(f"| {_name(k)} | {called[~truth].mean():.2f} | {called[truth].mean():.2f} |")
        print()


if __name__ == "__main__":
    main()
