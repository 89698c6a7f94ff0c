"""The orientation check on the X-rays of its held-out patients (never trained on), shown in each of the eight
orientations and changed as benchmarks/robustness.py changes them, and on pictures that are not chest X-rays: how many
it refuses and why, with 95% Clopper-Pearson intervals, its time per image, and what the bundled classifiers answer to
turned X-rays when nothing refuses them. With ``--split`` (the check's run's split.csv), the choice of
``RECOGNISED_AT`` on its validation X-rays.

    .venv/bin/python benchmarks/orientation.py [--check PATH] [--split RUN/split.csv] [--pictures DIR] [--threads 1]

Prints Markdown tables; results in benchmarks/results/orientation.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest

from lung_gate import not_chest_xrays
from lungscope.data.io import read_image
from lungscope.inference import Classifier
from lungscope.orientation import (
    NOT_RECOGNISED,
    ORIENTATIONS,
    RECOGNISED_AT,
    REFUSE_AT,
    SURE_UPRIGHT,
    OrientationCheck,
    describe,
    orient,
    recognition,
)
from robustness import PERTURBATIONS, at_level, perturbed

Change = Callable[[np.ndarray, int], np.ndarray]

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _share(count: int, total: int) -> str:
    low, high = binomtest(count, total).proportion_ci(0.95)
    return f"{count}/{total} = {count / total:.3f} ({low:.3f}-{high:.3f})"


def _batched(answer: Callable[[list[np.ndarray]], np.ndarray], images: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([answer(images[i:i + 64]) for i in range(0, len(images), 64)])


# Borders an exported or screenshotted X-ray may come with: (name, (left/right, top/bottom) as shares of the image's
# width and height, grey value)
BORDERS = (("black frame, 10% on each side", (0.1, 0.1), 0.0), ("white frame, 10% on each side", (0.1, 0.1), 1.0),
           ("letterboxed to 16:9 in black", (0.39, 0.0), 0.0), ("letterboxed to 16:9 in mid grey", (0.39, 0.0), 0.5))


def _framed(x: np.ndarray, sides: tuple[float, float], grey: float) -> np.ndarray:
    across, down = round(sides[0] * x.shape[1]), round(sides[1] * x.shape[0])
    return cv2.copyMakeBorder(x, down, down, across, across, cv2.BORDER_CONSTANT, value=grey)


def _changes() -> list[tuple[str, Change]]:
    """benchmarks/robustness.py's changes at its harshest level, tilts beyond it and :data:`BORDERS`, kept in [0, 1] as
    a file is."""
    changes: list[tuple[str, Change]] = [
        (f"{name} {levels[-1]:g} ({unit})", lambda x, i, name=name: np.clip(perturbed(x, name, 3, i), 0, 1))
        for name, (_, levels, unit) in PERTURBATIONS.items()]
    tilts: list[tuple[str, Change]] = [
        (f"rotation {d:g} (degrees)", lambda x, i, d=d: np.clip(at_level(x, "rotation", d, np.random.default_rng(i)),
                                                                 0, 1)) for d in (20.0, 30.0)]
    return changes + tilts + [(name, lambda x, i, sides=sides, grey=grey: _framed(x, sides, grey))
                              for name, sides, grey in BORDERS]


def _reasons(check: OrientationCheck, images: list[np.ndarray]) -> list[str | None]:
    """The check's reason to refuse each image (None: answered), as predict asks it."""
    return [why for i in range(0, len(images), 64) for why in check.reasons(images[i:i + 64])]


def _refusals(reasons: list[str | None]) -> str:
    """The share refused, with how many of them as not a chest X-ray."""
    unrecognised = sum(r is not None and r.startswith(NOT_RECOGNISED) for r in reasons)
    return f"{_share(sum(r is not None for r in reasons), len(reasons))}; {unrecognised} as not an X-ray"


def _name(index: int) -> str:
    return "upright, as is" if index == 0 else describe(index).split(";")[0].removeprefix("it looks ")


def _choose_threshold(check: OrientationCheck, split: Path) -> None:
    """RECOGNISED_AT's rule: the highest step of 0.05 that refuses none of the shared X-rays as stored with a step to
    spare (their least recognition at least the next step), and at most 1 in 1,000 of the validation X-rays of the
    check's split changed as benchmarks/robustness.py changes them (tilts beyond it left out)."""
    frame = pd.read_csv(split)
    stored = recognition(_batched(check.views, [read_image(p).pixels for p in frame["image"]]))[:, 0]
    val = (frame["split"] == "val").to_numpy()
    images = [read_image(p).pixels for p in frame.loc[val, "image"]]
    changed = np.concatenate([recognition(_batched(check.views, [change(x, i) for i, x in enumerate(images)]))[:, 0]
                              for _, change in _changes()[:len(PERTURBATIONS)]])
    steps = np.round(np.arange(0.05, 1.0, 0.05), 2)
    allowed = [t for t in steps if stored.min() >= t + 0.05 and (changed < t).sum() <= len(changed) / 1000]
    print(f"\nChoosing RECOGNISED_AT: {len(stored)} shared X-rays as stored (every one of the check's split), least "
          f"recognition {stored.min():.3f} ({Path(frame['image'][stored.argmin()]).name}); "
          f"{len(changed)} validation X-rays changed\n\n"
          "| threshold | shared X-rays refused | validation held-out refused | changed validation refused |\n"
          "| ---: | --- | --- | --- |")
    for t in steps[steps <= 0.6]:
        print(f"| {t:.2f} | {_share(int((stored < t).sum()), len(stored))} | "
              f"{_share(int((stored[val] < t).sum()), int(val.sum()))} | "
              f"{_share(int((changed < t).sum()), len(changed))} |")
    print(f"\nthe rule picks {max(allowed):.2f}; RECOGNISED_AT is {RECOGNISED_AT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", default="default", help="orientation-check checkpoint (default: the bundled one)")
    parser.add_argument("--split", type=Path, help="the check's run's split.csv: choose RECOGNISED_AT on its val part")
    parser.add_argument("--pictures", type=Path, help="a folder of further pictures that are not chest X-rays")
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
          f"children, {len(adults)} adults; refused as turned when one wrong orientation has probability >= "
          f"{REFUSE_AT}, as not an X-ray when the recognition is under {RECOGNISED_AT}\n")
    print("| shown | children refused | adults refused |\n| --- | --- | --- |")
    for k in range(len(ORIENTATIONS)):
        cells = [_refusals(_reasons(check, [orient(torch.from_numpy(x), k).numpy() for x in images]))
                 for images in groups.values()]
        print(f"| {_name(k)} | {' | '.join(cells)} |")

    print("\nUpright held-out X-rays changed as in `benchmarks/robustness.py` (its harshest level, and tilts beyond "
          "it): refused\n\n| change | children refused | adults refused |\n| --- | --- | --- |")
    for name, change in _changes():
        cells = [_refusals(_reasons(check, [change(x, i) for i, x in enumerate(images)]))
                 for images in groups.values()]
        print(f"| {name} | {' | '.join(cells)} |")

    pictures = not_chest_xrays(args.pictures)
    images = list(pictures.values())
    scores, reasons = recognition(_batched(check.views, images))[:, 0], _reasons(check, images)
    print(f"\nPictures that are not chest X-rays, and X-rays shown wrongly: {_refusals(reasons)}\n\n"
          "| picture | recognition as it is | answer |\n| --- | ---: | --- |")
    for name, score, why in sorted(zip(pictures, scores, reasons), key=lambda row: -row[1]):
        print(f"| {name} | {score:.3f} | {'answered' if why is None else why.split(':')[0].split(';')[0]} |")
    others = {name: np.ascontiguousarray(x) for name, x in pictures.items() if "X-ray" not in name}
    shown = {name: [orient(torch.from_numpy(x), k).numpy() for k in range(len(ORIENTATIONS))]
             for name, x in others.items()}
    answered = {name: sum(why is None for why in _reasons(check, views)) for name, views in shown.items()}
    all_views = _batched(check.views, [view for views in shown.values() for view in views])
    sure_only = int(((all_views[:, 0, 0] >= SURE_UPRIGHT) & (recognition(all_views)[:, 0] < RECOGNISED_AT)).sum())
    print(f"\nThe {len(others)} that are not X-rays, each shown in all eight orientations: "
          f"{_share(sum(answered.values()), 8 * len(others))} views answered ("
          + ", ".join(f"{name} {n}" for name, n in answered.items() if n)
          + f"); answered only for being surely upright (>= {SURE_UPRIGHT}) though not recognised: {sure_only}")

    if args.split is not None:
        _choose_threshold(check, args.split)

    one = groups["children"][0]
    check.problem(one)
    started = time.perf_counter()
    for _ in range(50):
        check.problem(one)
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
