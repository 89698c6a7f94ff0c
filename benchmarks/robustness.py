"""Shift benchmark: how a model holds up under acquisition changes (another detector, exposure, processing, framing).

    python benchmarks/robustness.py RUN_OR_CHECKPOINT [MORE ...] --data RUN/split.csv --split test [--n 400]
        [--out benchmarks/results/robustness]

Each X-ray of the split is decoded once, changed by each perturbation at three severities, and scored by every model
given (``default`` is the bundled one): ROC-AUC, and sensitivity and specificity at the model's own operating
threshold. Writes ``robustness.csv`` (one row per model, perturbation and severity), ``robustness.md`` (the table,
and the mean AUC per severity) and ``robustness.png`` (AUC against severity, one panel per perturbation).

The perturbations act on the decoded [0, 1] image at its own resolution, before the model's preprocessing, as an
acquisition change would; pixel sizes (blur, rotation) scale with the image. The images of one perturbation and
severity are the same for every model (the noise is seeded).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from lungscope.data.io import read_image  # noqa: E402
from lungscope.data.splits import load_manifest  # noqa: E402
from lungscope.inference import Classifier  # noqa: E402
from lungscope.progress import progress_bar  # noqa: E402

Perturb = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _jpeg(image: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(buffer), dtype=np.float32) / 255


def _blur(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma * min(image.shape) / 224)


def _rescale(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    small = cv2.resize(image, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _rotate(image: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)


def _zoom(image: np.ndarray, keep: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    dh, dw = round(h * (1 - keep) / 2), round(w * (1 - keep) / 2)
    return image[dh:h - dh, dw:w - dw]


def _pad(image: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    return np.pad(image, ((round(h * fraction),) * 2, (round(w * fraction),) * 2))


PERTURBATIONS: dict[str, tuple[Perturb, tuple[float, float, float], str]] = {
    "contrast": (lambda x, f, r: 0.5 + (x - 0.5) * f, (0.8, 0.6, 0.4), "grey levels squeezed to this factor"),
    "gamma": (lambda x, g, r: x**g, (1.3, 1.7, 2.2), "x ** gamma"),
    "brightness": (lambda x, b, r: x + b, (0.08, 0.16, 0.24), "added to every pixel"),
    "blur": (_blur, (1.0, 2.0, 3.0), "Gaussian sigma, pixels per 224"),
    "noise": (lambda x, s, r: x + r.normal(0, s, x.shape).astype(np.float32), (0.02, 0.05, 0.1), "Gaussian sigma"),
    "downscale": (_rescale, (2.0, 3.0, 4.0), "down by this factor, back up"),
    "jpeg": (_jpeg, (50, 25, 10), "JPEG quality"),
    "rotation": (_rotate, (5.0, 10.0, 15.0), "degrees"),
    "zoom": (_zoom, (0.9, 0.8, 0.7), "central crop keeping this fraction of each side"),
    "padding": (_pad, (0.05, 0.1, 0.2), "black border, this fraction of each side"),
}


def perturbed(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """``image`` changed by perturbation ``name`` at ``severity`` 1-3 (0: unchanged), clipped to [0, 1]."""
    if severity == 0:
        return image
    return at_level(image, name, PERTURBATIONS[name][1][severity - 1], np.random.default_rng(seed))


def at_level(image: np.ndarray, name: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` changed by perturbation ``name`` at any ``level`` of its own unit, clipped to [0, 1]."""
    return np.clip(PERTURBATIONS[name][0](image.astype(np.float32), level, rng), 0, 1).astype(np.float32)


def score(classifier: Classifier, images: list[np.ndarray], labels: np.ndarray, batch: int = 64) -> dict[str, float]:
    probabilities = np.concatenate(
        [classifier.predict_arrays(images[i:i + batch]) for i in range(0, len(images), batch)]
    )
    called = classifier.decide(probabilities)
    return {"auc": float(roc_auc_score(labels, probabilities[:, 1])),
            "sensitivity": float((called[labels == 1] == 1).mean()),
            "specificity": float((called[labels == 0] == 0).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="run folders, checkpoints or 'default'")
    parser.add_argument("--data", type=Path, required=True, help="a split manifest (path,label,patient_id,split)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=0, help="score a stratified random sample of this many images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/robustness"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    frame = load_manifest(args.data)
    frame = frame[frame["split"] == args.split]
    if args.n and args.n < len(frame):
        frame = frame.groupby("label").sample(frac=args.n / len(frame), random_state=args.seed)
    classifiers = {name: Classifier.load(name) for name in args.models}
    positive = next(iter(classifiers.values())).classes[1]
    labels = (frame["label"] == positive).to_numpy().astype(int)
    originals = [read_image(path).pixels for path in frame["path"]]
    conditions = [("none", 0)] + [(name, s) for name in PERTURBATIONS for s in (1, 2, 3)]
    rows = []
    for name, severity in progress_bar(conditions, desc="perturbations", unit="condition"):
        images = [perturbed(image, name, severity, args.seed + i) for i, image in enumerate(originals)]
        for model, classifier in classifiers.items():
            rows.append({"model": model, "perturbation": name, "severity": severity,
                         **score(classifier, images, labels)})
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "robustness.csv", index=False, float_format="%.4f")
    write_report(table, args, len(frame), int(labels.sum()))
    plot(table, args.out / "robustness.png")
    print(f"wrote {args.out}/robustness.md, .csv, .png")


def markdown(frame: pd.DataFrame) -> str:
    """A markdown table of a frame with (possibly multi-level) index and columns, values to 3 decimals."""
    def name(key: object) -> str:
        return " ".join(map(str, key)) if isinstance(key, tuple) else str(key)

    header = [" ".join(str(level) for level in frame.index.names)]
    header += [name(column) for column in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for key, values in frame.iterrows():
        lines.append("| " + " | ".join([name(key)] + [f"{v:.3f}" for v in values]) + " |")
    return "\n".join(lines)


def write_report(table: pd.DataFrame, args: argparse.Namespace, n: int, n_positive: int) -> None:
    wide = table.pivot_table(index=["perturbation", "severity"], columns="model",
                             values=["auc", "specificity", "sensitivity"], sort=False)
    means = table[table["severity"] > 0].groupby(["severity", "model"])[["auc", "specificity"]].mean().unstack()
    command = "python benchmarks/robustness.py " + " ".join(sys.argv[1:])
    lines = [
        "# Shift benchmark", "", f"`{command}`", "",
        f"{n} images ({n_positive} positive) of the `{args.split}` split of `{args.data}`; each perturbation at "
        "three severities (levels below); AUC, and sensitivity/specificity at each model's own threshold.", "",
        "| perturbation | levels (severity 1, 2, 3) |", "| --- | --- |",
        *[f"| {k} | {', '.join(map(str, v[1]))}: {v[2]} |" for k, v in PERTURBATIONS.items()], "",
        "## Mean over the ten perturbations", "", markdown(means), "",
        "## Every condition", "", markdown(wide), "",
    ]
    (args.out / "robustness.md").write_text("\n".join(lines))


def plot(table: pd.DataFrame, path: Path) -> None:
    names = list(PERTURBATIONS)
    fig, axes = plt.subplots(2, 5, figsize=(16, 6.4), sharey=True, constrained_layout=True)
    for ax, name in zip(axes.flat, names):
        for model, part in table.groupby("model", sort=False):
            rows = pd.concat([part[part["perturbation"] == "none"], part[part["perturbation"] == name]])
            ax.plot(rows["severity"], rows["auc"], "o-", label=str(model))
        ax.set(title=name, xticks=[0, 1, 2, 3], xlabel="severity")
    axes[0, 0].set_ylabel("ROC-AUC")
    axes[1, 0].set_ylabel("ROC-AUC")
    axes[0, 0].legend(fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
