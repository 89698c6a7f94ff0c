"""Cheap changes at inference to the bundled lung U-Net, on its 85 held-out test masks (Dice at 256x256 after the
clean-up): a horizontally flipped second pass averaged in, a lower probability threshold, a one-pixel dilation.

    .venv/bin/python benchmarks/segmentation_tta.py

Prints mean and 5th-percentile Dice per variant; results in benchmarks/results/segmentation.md.
"""

from pathlib import Path

import cv2
import numpy as np
import torch

from lungscope.checkpoint import load_checkpoint
from lungscope.data.io import read_image
from lungscope.segmentation import DEFAULT_SEGMENTER, LungSegmenter
from lungscope.segmentation.masks import clean_mask

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lung_masks"
seg = LungSegmenter.load(DEFAULT_SEGMENTER)
names = load_checkpoint(DEFAULT_SEGMENTER)["split"]["test"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


res: dict[str, list[float]] = {k: [] for k in ("plain", "hflip", "thr0.4", "thr0.3", "dil1")}
for n in names:
    img = read_image(DATA / "images" / n).pixels
    truth = read_image(DATA / "masks" / n).pixels > 0.5
    p = seg.probabilities([img])[0]
    pf = seg.probabilities([img[:, ::-1].copy()])[0][:, ::-1]
    res["plain"].append(dice(clean_mask(p >= seg.threshold), truth))
    res["hflip"].append(dice(clean_mask((p + pf) / 2 >= seg.threshold), truth))
    res["thr0.4"].append(dice(clean_mask(p >= 0.4), truth))
    res["thr0.3"].append(dice(clean_mask(p >= 0.3), truth))
    m = clean_mask(p >= seg.threshold).astype(np.uint8)
    res["dil1"].append(dice(cv2.dilate(m, np.ones((3, 3), np.uint8)) > 0, truth))
for name, values in res.items():
    scores = np.array(values)
    print(f"{name}: Dice mean {scores.mean():.4f}, 5th percentile {np.quantile(scores, 0.05):.4f}")
