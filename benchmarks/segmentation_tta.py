"""Cheap changes at inference to the bundled lung U-Net, on its 85 held-out test masks (Dice at 256x256 after the
clean-up): a horizontally flipped second pass averaged in, a lower or higher probability threshold, a one-pixel
dilation. The thresholds are scored on the checkpoint's validation images too, where one would be chosen.

    .venv/bin/python benchmarks/segmentation_tta.py

Prints mean and 5th-percentile Dice per variant; results in benchmarks/results/segmentation.md.
"""

from pathlib import Path

import cv2
import numpy as np
import torch

from lungscope.checkpoint import load_checkpoint
from lungscope.data.io import read_image, read_mask
from lungscope.segmentation import DEFAULT_SEGMENTER, LungSegmenter, dice
from lungscope.segmentation.masks import clean_mask

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lung_masks"


def main() -> None:
    torch.set_num_threads(1)
    seg = LungSegmenter.load(DEFAULT_SEGMENTER)
    split = load_checkpoint(DEFAULT_SEGMENTER)["split"]
    for part in ("val", "test"):
        by_threshold: dict[float, list[float]] = {t: [] for t in (0.3, 0.4, 0.5, 0.6, 0.7)}
        for name in split[part]:
            p = seg.probabilities([read_image(DATA / "images" / name).pixels])[0]
            truth = read_mask(DATA / "masks" / name)
            for threshold, values in by_threshold.items():
                values.append(dice(clean_mask(p >= threshold), truth))
        for threshold, values in by_threshold.items():
            print(f"{part} threshold {threshold}: Dice mean {np.mean(values):.4f}, "
                  f"5th percentile {np.quantile(values, 0.05):.4f}")
    scores: dict[str, list[float]] = {k: [] for k in ("plain", "hflip", "dil1")}
    for name in split["test"]:
        image = read_image(DATA / "images" / name).pixels
        truth = read_mask(DATA / "masks" / name)
        p = seg.probabilities([image])[0]
        flipped = seg.probabilities([image[:, ::-1].copy()])[0][:, ::-1]
        plain = clean_mask(p >= seg.threshold)
        scores["plain"].append(dice(plain, truth))
        scores["hflip"].append(dice(clean_mask((p + flipped) / 2 >= seg.threshold), truth))
        scores["dil1"].append(dice(cv2.dilate(plain.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0, truth))
    for variant, values in scores.items():
        measured = np.array(values)
        print(f"{variant}: Dice mean {measured.mean():.4f}, 5th percentile {np.quantile(measured, 0.05):.4f}")


if __name__ == "__main__":
    main()
