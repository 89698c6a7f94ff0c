"""Where lung segmenters miss: several segmenters on the same held-out shared masks, and how their errors agree.

For each segmenter (checkpoints of the same patient-grouped split, e.g. the bundled lung U-Net and retrained ones):
Dice on the held-out test split per source (Shenzhen ``CHNCXR``, Montgomery ``MCUCXR``), then, for the worst tenth of
the images against the rest, recall and precision of the lung pixels, the share of the error that is missed lung (not
extra lung), and the share of the missed lung that lies in the lower half of the image's right side (the patient's
left base, behind the heart and the diaphragm's dome). Across segmenters: the correlation of their per-image Dice and
their Dice against each other. Errors that differ by network are the networks'; errors that every network makes on
the same images, while the networks agree with each other better than with the truth, are the masks' drawing.

    .venv/bin/python benchmarks/segmentation_errors.py default RUN/best.pt [MORE ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lungscope.checkpoint import load_checkpoint
from lungscope.data.io import read_image, read_mask
from lungscope.segmentation import DEFAULT_SEGMENTER, LungSegmenter, dice

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lung_masks"
WORST = 0.1  # the fraction of images called the worst


def scores(masks: list[np.ndarray], truths: list[np.ndarray], names: list[str]) -> pd.DataFrame:
    """One row per image: Dice, recall, precision, missed share of the error, left-base share of the missed lung."""
    rows = []
    for mask, truth, name in zip(masks, truths, names):
        missed, extra = truth & ~mask, mask & ~truth
        height, width = truth.shape
        left_base = np.zeros_like(truth)
        left_base[height // 2:, width // 2:] = True
        rows.append({
            "source": re.sub(r"_.*", "", name), "dice": dice(mask, truth),
            "recall": (truth & mask).sum() / truth.sum(), "precision": (truth & mask).sum() / max(mask.sum(), 1),
            "missed_share": missed.sum() / max(missed.sum() + extra.sum(), 1),
            "missed_in_left_base": (missed & left_base).sum() / max(missed.sum(), 1),
        })
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="segmenter checkpoints or run folders, or 'default'")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [DEFAULT_SEGMENTER if m == "default" else Path(m) / "best.pt" if Path(m).is_dir() else Path(m)
             for m in args.models]
    splits = [load_checkpoint(p, kind="segmenter")["split"]["test"] for p in paths]
    if any(sorted(s) != sorted(splits[0]) for s in splits):
        raise SystemExit("the segmenters were tested on different images: give checkpoints of the same split")
    names = splits[0]
    images = [read_image(DATA / "images" / n).pixels for n in names]
    truths = [read_mask(DATA / "masks" / n) for n in names]
    masks = {model: LungSegmenter.load(p).masks(images) for model, p in zip(args.models, paths)}
    print(f"{len(names)} held-out images of {DATA}; worst = the {WORST:.0%} with the lowest Dice\n")
    frames = {model: scores(predicted, truths, names) for model, predicted in masks.items()}
    table = {}
    for model, frame in frames.items():
        worst = frame.nsmallest(max(1, round(WORST * len(frame))), "dice")
        rest = frame.drop(worst.index)
        row = {"Dice": frame["dice"].mean(), "Dice p5": frame["dice"].quantile(0.05)}
        row |= {f"Dice {source}": part["dice"].mean() for source, part in frame.groupby("source")}
        for label, part in (("worst", worst), ("rest", rest)):
            row |= {f"{label} {key}": part[key].mean()
                    for key in ("recall", "precision", "missed_share", "missed_in_left_base")}
        table[model] = row
    print(pd.DataFrame(table).round(3).to_string(), "\n")
    for first, second in itertools.combinations(masks, 2):
        a, b = frames[first]["dice"], frames[second]["dice"]
        between = [dice(x, y) for x, y in zip(masks[first], masks[second])]
        print(f"{first} vs {second}: per-image Dice correlation {np.corrcoef(a, b)[0, 1]:.3f}; Dice between their "
              f"masks {np.mean(between):.3f} (5th percentile {np.quantile(between, 0.05):.3f})")


if __name__ == "__main__":
    main()
