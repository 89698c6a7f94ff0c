"""Could the lung segmenter refuse inputs that are not chest X-rays? The share of the image its cleaned mask covers,
on every shared chest X-ray against pictures that are not chest X-rays (noise, gradients, a chart, a page of text,
photographs bundled with matplotlib and scikit-learn) and chest X-rays shown wrongly (inverted, rotated).

A refusal rule "no lungs found" is only honest if every real X-ray passes it with a margin and the others fail.

    .venv/bin/python benchmarks/lung_gate.py [--children N] [--threads 1]

Prints the lung share of each made-up input and percentiles over the real images; results in
benchmarks/results/lung_gate.md.
"""

from __future__ import annotations

import argparse
import gzip
import io
import random
from collections.abc import Callable
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pandas as pd
import pydicom
import torch
from PIL import Image, ImageDraw
from sklearn.datasets import load_sample_images

from lungscope.data.datasets import find_images
from lungscope.data.io import read_image
from lungscope.errors import ImageReadError
from lungscope.segmentation import LungSegmenter

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _page(draw: Callable[[ImageDraw.ImageDraw], object], size: tuple[int, int], background: int) -> np.ndarray:
    image = Image.new("L", size, background)
    draw(ImageDraw.Draw(image))
    return np.asarray(image, np.float32) / 255


def shuffled_children() -> list[Path]:
    """The shared pediatric training images in one fixed random order (seed 0), so that a prefix is a fair sample."""
    children = sorted((SHARED / "chest_xray" / "train").glob("*/*.jpeg"))
    random.Random(0).shuffle(children)
    return children


def _medical() -> dict[str, np.ndarray]:
    """Medical images that are not chest X-rays, bundled with pydicom and matplotlib (CT, MR, ultrasound)."""
    dicoms = Path(pydicom.__file__).parent / "data" / "test_files"
    inputs = {f"pydicom {name} ({label})": read_image(dicoms / name).pixels for name, label in (
        ("693_J2KI.dcm", "CT"), ("J2K_pixelrep_mismatch.dcm", "CT head"), ("MR_small.dcm", "MR"),
        ("examples_overlay.dcm", "MR abdomen"), ("examples_jpeg2k.dcm", "ultrasound"),
        ("examples_rgb_color.dcm", "ultrasound, colour"), ("image_dfl.dcm", "secondary capture"))}
    with gzip.open(Path(matplotlib.get_data_path()) / "sample_data" / "s1045.ima.gz") as raw:  # a 16-bit MR slice
        slice_ = np.frombuffer(raw.read(), np.uint16).reshape(256, 256).astype(np.float32)
    inputs["matplotlib s1045.ima (MR head)"] = slice_ / slice_.max()
    return inputs


def not_chest_xrays(pictures: Path | None = None) -> dict[str, np.ndarray]:
    """Made-up and bundled pictures that are not chest X-rays, and X-rays shown the wrong way, in [0, 1]; with
    ``pictures``, every image lungscope reads in that folder too."""
    rng = np.random.default_rng(0)
    adult = read_image(SHARED / "lung_masks" / "images" / "CHNCXR_0327_1.png").pixels
    child = read_image(sorted((SHARED / "chest_xray" / "train" / "NORMAL").glob("*.jpeg"))[0]).pixels
    blurred = cv2.GaussianBlur(rng.random((300, 300)).astype(np.float32), (0, 0), 8)
    figure, axes = plt.subplots(figsize=(4, 4))
    axes.plot(rng.random(50))
    axes.set_title("a chart")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    inputs = {
        "uniform noise": rng.random((300, 300)).astype(np.float32),
        "blurred noise, stretched to [0, 1]": (blurred - blurred.min()) / (blurred.max() - blurred.min()),
        "horizontal gradient": np.tile(np.linspace(0, 1, 300, dtype=np.float32), (300, 1)),
        "checkerboard": (np.indices((300, 300)).sum(0) // 30 % 2).astype(np.float32),
        "matplotlib chart": np.asarray(Image.open(buffer).convert("L"), np.float32) / 255,
        "page of text": _page(lambda d: [d.text((20, y), "Patient report: lorem ipsum dolor " * 3, fill=0)
                                         for y in range(20, 480, 18)], (400, 500), 255),
        "two bright ellipses on black": _page(lambda d: [d.ellipse(box, fill=200) for box in
                                                         ((60, 60, 180, 340), (220, 60, 340, 340))], (400, 400), 30),
        "two dark ellipses on white": _page(lambda d: [d.ellipse(box, fill=40) for box in
                                                       ((60, 60, 180, 340), (220, 60, 340, 340))], (400, 400), 220),
        "adult X-ray, inverted": 1 - adult,
        "child X-ray, inverted": 1 - child,
        "adult X-ray, rotated 90 degrees": np.rot90(adult).copy(),
        "child X-ray, upside down": child[::-1].copy(),
    }
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        inputs[f"photograph {name}"] = read_image(Path(matplotlib.get_data_path()) / "sample_data" / name).pixels
    for name, photo in zip(("china.jpg", "flower.jpg"), load_sample_images().images):
        inputs[f"photograph {name}"] = (photo.mean(axis=2) / 255).astype(np.float32)
    inputs |= _medical()
    for path in find_images(pictures)[0] if pictures else []:
        try:
            inputs[path.name] = read_image(path).pixels
        except ImageReadError:  # refused before any network sees it
            continue
    return inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=None, help="pediatric images to score (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = LungSegmenter.load("default")

    def lung_share(pixels: np.ndarray) -> float:
        return float(segmenter.mask(pixels).mean())

    for name, pixels in not_chest_xrays().items():
        print(f"| {name} | {lung_share(pixels):.3f} |", flush=True)
    sets = {"adults (lung_masks, all)": sorted((SHARED / "lung_masks" / "images").glob("*.png")),
            "children (chest_xray/train)": shuffled_children()[: args.children]}
    frame = pd.DataFrame([{"set": name, "path": str(path), "lung share": lung_share(read_image(path).pixels)}
                          for name, paths in sets.items() for path in paths])
    table = frame.groupby("set")["lung share"].describe(percentiles=[0.001, 0.01, 0.05, 0.5])
    table = table[["count", "min", "0.1%", "1%", "5%", "50%", "max"]]
    print("| set | " + " | ".join(table.columns) + " |\n|---|" + "---|" * len(table.columns))
    for name, row in table.iterrows():
        print(f"| {name} | {row['count']:.0f} | " + " | ".join(f"{v:.3f}" for v in row.iloc[1:]) + " |")
    for name, part in frame.groupby("set"):
        print(name, "lowest:", ", ".join(f"{Path(p).name} {s:.3f}" for p, s in
                                        part.nsmallest(3, "lung share")[["path", "lung share"]].values))


if __name__ == "__main__":
    main()
