"""Lung segmentation quality and CPU time: the bundled lung U-Net on the shared masks it never trained on.

Dice and IoU of the cleaned mask (two largest regions, holes filled) against the true mask, at the images' own
256x256 resolution, on the checkpoint's held-out test split (patient-grouped: one image per patient in the set),
as the mean and the 5th percentile (the worst images matter most for a crop). CPU time per image of
``LungSegmenter.mask`` (resize to the network's 128x128, forward pass, upsampling, clean-up) one image at a time,
at 256x256 and at a typical full-resolution 2048x2048, median of the repeats. Run from the repository root:

    .venv/bin/python benchmarks/segmentation.py           # writes benchmarks/results/segmentation.md
    .venv/bin/python benchmarks/segmentation.py --model RUN_DIR/best.pt --quick   # prints only
    .venv/bin/python benchmarks/segmentation.py --threads 1   # on a busy machine: two threads that wait for each
                                                              # other's time slice cost 20x (measured at load 7.5)
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from lungscope.checkpoint import load_checkpoint
from lungscope.data.io import read_image
from lungscope.segmentation import DEFAULT_SEGMENTER, LungSegmenter
from lungscope.segmentation.files import mask_scores

RESULTS = Path(__file__).parent / "results" / "segmentation.md"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lung_masks"


def milliseconds(segmenter: LungSegmenter, pixels: np.ndarray, repeats: int) -> float:
    """Median wall time of one ``mask`` call."""
    segmenter.mask(pixels)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        segmenter.mask(pixels)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_SEGMENTER), help="segmenter checkpoint (default: bundled)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="10 images, 5 repeats, print only")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    segmenter = LungSegmenter.load(args.model)
    names = load_checkpoint(args.model)["split"]["test"]
    if args.quick:
        names, args.repeats = names[:10], 5
    pairs = pd.DataFrame({"image": [str(DATA / "images" / n) for n in names],
                          "mask": [str(DATA / "masks" / n) for n in names]})
    measured = mask_scores(segmenter, pairs)
    dices, ious = measured["dice"].to_numpy(), measured["iou"].to_numpy()
    image = read_image(DATA / "images" / names[0]).pixels
    timing = {side: milliseconds(segmenter, cv2.resize(image, (side, side)), args.repeats) for side in (256, 2048)}
    load = os.getloadavg()[0]
    lines = [
        "# Lung segmentation: the bundled lung U-Net on held-out shared masks",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- command: `{shlex.join([sys.executable, *sys.argv])}`",
        f"- model: {args.model} ({segmenter.info.get('model_name')}, input {segmenter.input_size}x"
        f"{segmenter.input_size}, best epoch {segmenter.info.get('epoch')})",
        f"- data: {len(names)} held-out images of ../shared/data/lung_masks (the checkpoint's test split, grouped by "
        "patient, never trained on), scored at 256x256",
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} CPUs, no GPU; "
        f"1-minute load average {load:.2f} at the end",
        "",
        "| metric | mean | 5th percentile | minimum |",
        "|---|---|---|---|",
        f"| Dice | {dices.mean():.3f} | {np.quantile(dices, 0.05):.3f} | {dices.min():.3f} |",
        f"| IoU | {ious.mean():.3f} | {np.quantile(ious, 0.05):.3f} | {ious.min():.3f} |",
        "",
        "| input | CPU ms per image (median, one image per call) | images per second |",
        "|---|---|---|",
        *(f"| {side}x{side} | {ms:.1f} | {1000 / ms:.0f} |" for side, ms in timing.items()),
        "",
        f"Full resolution costs {timing[2048] / timing[256]:.1f}x the 256x256 time (the network always runs at "
        f"{segmenter.input_size}x{segmenter.input_size}; resizing, upsampling and the clean-up scale with pixels).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
