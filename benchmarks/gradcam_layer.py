"""Where a cxr-resnet's Grad-CAM looks, by layer and by logit centring: the lung share of four variants of the map.

    python benchmarks/gradcam_layer.py [MODEL] [--n 150] [--internal RUN/split.csv]
        [--out benchmarks/results/gradcam_layer.md]

For the same weights, Grad-CAM of the predicted class at the ``cam`` convolution (before its ReLU) or at ``relu``
(the maps the head pools), of the raw class logits or of the logits centred over the classes (what cxr-resnet
outputs since the change, probabilities unchanged). Per variant: the share of the map's positive mass inside the lung
fields (on ``--n`` shared TB images with their true masks, and on ``--n`` internal test images with the bundled
segmenter's masks when ``--internal`` names a split manifest) and the positive part's share of the map's mass.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lungscope.data.io import read_image, read_mask
from lungscope.data.splits import load_manifest
from lungscope.data.transforms import build_preprocess
from lungscope.explain import explain, lung_share
from lungscope.inference import Classifier
from lungscope.segmentation import LungSegmenter


class RawLogits(nn.Module):
    """A cxr-resnet's logits before centring (the head's output as it was)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.fc(m.dropout(m.pool(m.relu(m.cam(m.features(x)))).flatten(1)))


def _sample(paths: list[Path], n: int) -> list[Path]:
    chosen = np.random.default_rng(0).choice(len(paths), size=min(n, len(paths)), replace=False)
    return [paths[i] for i in sorted(chosen)]


def shares(classifier: Classifier, paths: list[Path], masks: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    """Variant -> (mean lung share, mean positive share of |map|)."""
    on_input = build_preprocess(classifier.image_size, resize=classifier.preprocessing.resize)
    images = torch.stack([classifier.transform(read_image(p).pixels) for p in paths])
    grid = np.stack([on_input(m.astype(np.float32))[0].numpy() >= 0.5 for m in masks]).astype(np.float32)
    raw = RawLogits(classifier.model)
    with torch.no_grad():
        targets = classifier.model(images).argmax(dim=1)
    variants = {"cam, raw logits": (raw, "model.cam"), "relu, raw logits": (raw, "model.relu"),
                "cam, centred logits": (classifier.model, "cam"), "relu, centred logits": (classifier.model, "relu")}
    out = {}
    for name, (model, layer) in variants.items():
        maps = np.concatenate([explain(model, images[i:i + 16], "gradcam", target=targets[i:i + 16], layer=layer,
                                       warn=False).maps for i in range(0, len(images), 16)])
        positive = np.maximum(maps, 0).sum(axis=(1, 2)) / (np.abs(maps).sum(axis=(1, 2)) + 1e-12)
        out[name] = (float(np.nanmean(lung_share(maps, grid))), float(positive.mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="default")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lung_masks"))
    parser.add_argument("--internal", type=Path, help="a run's split.csv: its test rows, with segmenter masks")
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gradcam_layer.md"))
    args = parser.parse_args()
    classifier = Classifier.load(args.model)
    tb = _sample(sorted((args.data / "images").glob("*.png")), args.n)
    columns = {f"TB images, true masks ({len(tb)})": shares(
        classifier, tb, [read_mask(args.data / "masks" / p.name) for p in tb])}
    if args.internal:
        frame = load_manifest(args.internal)
        internal = _sample(sorted(Path(p) for p in frame.loc[frame["split"] == "test", "path"]), args.n)
        segmenter = LungSegmenter.load()
        columns[f"internal test, segmenter masks ({len(internal)})"] = shares(
            classifier, internal, [segmenter.mask(read_image(p).pixels) for p in internal])
    lines = ["# Grad-CAM lung share by layer and logit centring", "",
             f"`python benchmarks/gradcam_layer.py {' '.join(sys.argv[1:])}`", "",
             "Lung share: the map's positive mass inside the lungs (uniform map: the lungs' area); in brackets the "
             "positive part's share of the map's mass.", "",
             "| Grad-CAM variant | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for variant in next(iter(columns.values())):
        cells = [f"{c[variant][0]:.3f} ({c[variant][1]:.3f})" for c in columns.values()]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
