"""Could the bundled pneumonia model's own features refuse inputs that are not chest X-rays? The Mahalanobis distance
(Ledoit-Wolf covariance, scikit-learn) of each image's final-layer input from 4,000 of the shared pediatric training
images, for the other 1,216, the 563 adults and the made-up inputs of ``lung_gate.py``.

    .venv/bin/python benchmarks/feature_gate.py [--threads 1]

Prints the distance percentiles and each made-up input's distance; results in benchmarks/results/lung_gate.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from lungscope.features.extract import FeatureExtractor
from lungscope.inference import Classifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lung_gate import SHARED, not_chest_xrays, shuffled_children  # noqa: E402

FIT = 4000  # pediatric images the distribution is fitted on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    classifier = Classifier.load("default")
    extractor = FeatureExtractor(classifier)

    def features(paths: list[Path]) -> np.ndarray:
        rows = extractor.extract_files([str(p) for p in paths])
        return np.stack([row["features"] for row in rows if row["error"] is None])

    children = shuffled_children()
    fitted = LedoitWolf().fit(features(children[:FIT]))

    def distance(vectors: np.ndarray) -> np.ndarray:
        return np.sqrt(fitted.mahalanobis(np.atleast_2d(vectors)))

    print(f"features: {extractor.layer}, {extractor.feature_dim} values")
    print("| images | count | min | median | 99% | 99.9% | max |\n|---|---|---|---|---|---|---|")
    for name, paths in (("children, held out", children[FIT:]),
                        ("adults (lung_masks)", sorted((SHARED / "lung_masks" / "images").glob("*.png")))):
        d = distance(features(paths))
        print(f"| {name} | {len(d)} | {d.min():.1f} | {np.median(d):.1f} | {np.quantile(d, 0.99):.1f} | "
              f"{np.quantile(d, 0.999):.1f} | {d.max():.1f} |")
    print("\n| input | distance |\n|---|---:|")
    for name, pixels in not_chest_xrays().items():
        vector = extractor.vectors(classifier.transform(pixels)[None]).numpy()
        print(f"| {name} | {distance(vector)[0]:.1f} |")


if __name__ == "__main__":
    main()
