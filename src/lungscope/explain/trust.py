"""How far to trust a map: faithfulness, the model-randomisation sanity check, and the share inside the lungs.

- Deletion and insertion (Petsiuk et al. 2018, RISE): pixels are removed (set to the mean grey, 0 after
  normalisation) or inserted into a blurred copy, most salient first, and the model's probability of the explained
  class is followed. A faithful map makes the deletion curve fall fast (small area) and the insertion curve rise
  fast (large area). Pixels are ranked by the signed map: evidence for the class first.
- Cascading randomisation (Adebayo et al. 2018): the weights of the convolutions and linear layers are
  re-initialised from the output layer down, one more layer at each step, on a copy of the model; at each step the
  Spearman rank correlation between the trained and the randomised maps is averaged over the images. A method whose
  maps barely change explains the image, not the model. The signed maps are compared (lungscope keeps signs, and a
  map whose sign flips shows the opposite); the paper's absolute-value variant is reported beside it. The absolute
  value of input-weighted maps (integrated gradients) follows the image's own contrast whatever the weights.
- Lung-field attention share: the fraction of a map's positive mass inside the lung fields.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.stats import spearmanr
from torch import nn
from torchvision.transforms.v2 import functional as TF

from lungscope.explain.api import explain
from lungscope.explain.base import BASELINE, METHODS, explaining, probabilities, resolve_targets
from lungscope.explain.sanity import FLAG_THRESHOLD
from lungscope.progress import progress_bar
from lungscope.text import format_table

# RISE blurs a 224-pixel input with an 11-pixel Gaussian kernel of sigma 5; scaled here to the input's side.
_BLUR_KERNEL, _BLUR_SIGMA, _BLUR_SIDE = 11, 5.0, 224


def explain_maps(
    model: nn.Module,
    images: torch.Tensor,
    method: str,
    targets: torch.Tensor,
    *,
    layer: str | None = None,
    batch_size: int = 16,
    options: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """``(N, H, W)`` maps of ``method`` for many images, ``batch_size`` at a time (no sanity warning)."""
    layer = layer if METHODS[method].uses_layer else None
    chunks = [
        explain(model, images[i : i + batch_size], method, targets[i : i + batch_size], layer, warn=False,
                **(options or {})).maps
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def _blur(images: torch.Tensor) -> torch.Tensor:
    side = min(images.shape[-2:])
    kernel = max(3, 2 * round(_BLUR_KERNEL * side / _BLUR_SIDE / 2) + 1)
    sigma = _BLUR_SIGMA * side / _BLUR_SIDE
    return TF.gaussian_blur(images, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    maps: np.ndarray,
    targets: torch.Tensor,
    *,
    steps: int = 32,
    batch_size: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves ``(N, steps + 1)``: the probability of each image's target after removing
    (inserting) the ``k / steps`` most salient fraction of its pixels, k = 0..steps."""
    device = next(model.parameters()).device
    n, _, height, width = images.shape
    counts = torch.linspace(0, height * width, steps + 1).round().long()[:, None]
    ranks = torch.as_tensor(maps).flatten(1).argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    blurred = _blur(images)
    curves = np.empty((n, 2 * (steps + 1)), dtype=np.float64)
    with explaining(model), torch.no_grad():
        for i in range(n):
            chosen = (ranks[i][None] < counts).view(steps + 1, 1, height, width)
            image = images[i : i + 1]
            batch = torch.cat([torch.where(chosen, BASELINE, image), torch.where(chosen, image, blurred[i : i + 1])])
            curves[i] = torch.cat([
                probabilities(model(chunk.to(device)).float())[:, targets[i]].cpu()
                for chunk in batch.split(batch_size)
            ]).numpy()
    return curves[:, : steps + 1], curves[:, steps + 1 :]


def curve_area(curves: np.ndarray) -> np.ndarray:
    """Area under each curve over the fraction of pixels, [0, 1] (trapezoids)."""
    return np.trapezoid(curves, dx=1 / (curves.shape[1] - 1), axis=1)


def randomizable_layers(model: nn.Module) -> list[str]:
    """Names of the convolutions and linear layers, the output side first: the order of the cascade."""
    return [name for name, module in reversed(list(model.named_modules())) if isinstance(module, nn.Conv2d | nn.Linear)]


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two maps; 0 if either is constant (it ranks nothing)."""
    a, b = np.ravel(first), np.ravel(second)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def cascading_randomization(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    original: Mapping[str, np.ndarray],
    *,
    layer: str | None = None,
    seed: int = 0,
    batch_size: int = 16,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    bar: Any = None,
) -> dict[str, list[dict[str, Any]]]:
    """For each method of ``original`` (its maps of the trained model): ``[{"layer", "spearman", "spearman_abs"}]``,
    one entry per step of the cascade: the layer re-initialised at that step and the mean rank correlation over
    images of the signed maps and of their absolute values.

    Works on a deep copy (the model is untouched); re-initialisation is each layer's own ``reset_parameters``,
    seeded so that a check repeats exactly.
    """
    randomized = copy.deepcopy(model)
    device = next(model.parameters()).device
    cascade: dict[str, list[dict[str, Any]]] = {method: [] for method in original}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for name in randomizable_layers(randomized):
            # randomizable_layers names only modules with reset_parameters (Module's __getattr__ types it
            # Tensor | Module)
            randomized.get_submodule(name).reset_parameters()  # type: ignore[operator]
            for method, maps in original.items():
                changed = explain_maps(randomized, images, method, targets, layer=layer, batch_size=batch_size,
                                       options=(method_options or {}).get(method))
                rho = np.mean([rank_correlation(a, b) for a, b in zip(maps, changed)])
                rho_abs = np.mean([rank_correlation(np.abs(a), np.abs(b)) for a, b in zip(maps, changed)])
                cascade[method].append({"layer": name, "spearman": float(rho), "spearman_abs": float(rho_abs)})
                if bar is not None:
                    bar.update(1)
    return cascade


def lung_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image, the fraction of the map's positive mass inside the mask (values in [0, 1], 1 = lung); NaN for a
    map with no positive values."""
    positive = np.maximum(np.asarray(maps, dtype=np.float64), 0)
    total = positive.sum(axis=(-2, -1))
    inside = (positive * masks).sum(axis=(-2, -1))
    return np.divide(inside, total, out=np.full_like(total, np.nan), where=total > 0)


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def explain_check(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    masks: np.ndarray | None = None,
    methods: Sequence[str] = tuple(METHODS),
    *,
    layer: str | None = None,
    steps: int = 32,
    randomization_images: int | None = 32,
    seed: int = 0,
    batch_size: int = 16,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Faithfulness, randomisation sanity and lung share of each method on a batch of model inputs.

    ``targets``: the class explained per image (default: the predicted one). ``masks``: ``(N, H, W)`` lung masks
    on the model input's grid (1 inside), or None. The cascade, which recomputes every map once per layer, runs on
    the first ``randomization_images`` images (None: all); a mean rank correlation over 32 images varies by
    about +-0.03. Returns ``{"images", "steps", "randomization_images", "lung_area_fraction",
    "methods": {METHOD: {"deletion_auc", "insertion_auc", "randomization_spearman", "flagged", "lung_share",
    "randomization_spearman_abs", "deletion_curve", "insertion_curve", "randomization_cascade"}}}`` (areas and
    curves averaged over images; the rank correlations averaged over the cascade; ``flagged`` when the signed one
    is at least ``FLAG_THRESHOLD``).
    """
    if targets is None:
        with explaining(model), torch.no_grad():
            targets = resolve_targets(None, model(images.to(next(model.parameters()).device))).cpu()
    options = method_options or {}
    bar = progress_bar(total=len(methods) * (1 + len(randomizable_layers(model))), show=progress, desc="explain-check")
    with bar:
        original = {}
        report: dict[str, Any] = {"methods": {}}
        for method in methods:
            original[method] = explain_maps(model, images, method, targets, layer=layer, batch_size=batch_size,
                                            options=options.get(method))
            deletion, insertion = deletion_insertion(model, images, original[method], targets, steps=steps)
            share = float(np.nanmean(lung_share(original[method], masks))) if masks is not None else math.nan
            report["methods"][method] = {
                "deletion_auc": float(curve_area(deletion).mean()),
                "insertion_auc": float(curve_area(insertion).mean()),
                "lung_share": _nan_to_none(share),
                "deletion_curve": deletion.mean(axis=0).round(5).tolist(),
                "insertion_curve": insertion.mean(axis=0).round(5).tolist(),
            }
            bar.update(1)
        subset = slice(0, randomization_images)
        cascade = cascading_randomization(
            model, images[subset], targets[subset], {method: maps[subset] for method, maps in original.items()},
            layer=layer, seed=seed, batch_size=batch_size, method_options=options, bar=bar,
        )
    for method, steps_taken in cascade.items():
        rho = float(np.mean([step["spearman"] for step in steps_taken]))
        report["methods"][method].update(
            randomization_spearman=rho,
            randomization_spearman_abs=float(np.mean([step["spearman_abs"] for step in steps_taken])),
            flagged=rho >= FLAG_THRESHOLD,
            randomization_cascade=steps_taken,
        )
    lung_area = float(np.mean(masks)) if masks is not None else None
    return {"images": len(images), "steps": steps, "randomization_images": len(images[subset]),
            "lung_area_fraction": lung_area, **report}


def trust_figure(report: Mapping[str, Any], *, title: str = "") -> Figure:
    """Mean deletion and insertion curves, and the rank correlation along the randomisation cascade, per method."""
    figure = Figure(figsize=(15, 4.4), layout="constrained")
    deletion_ax, insertion_ax, cascade_ax = figure.subplots(1, 3)
    for method, entry in report["methods"].items():
        fractions = np.linspace(0, 1, len(entry["deletion_curve"]))
        deletion_ax.plot(fractions, entry["deletion_curve"], label=f"{method} ({entry['deletion_auc']:.3f})")
        insertion_ax.plot(fractions, entry["insertion_curve"], label=f"{method} ({entry['insertion_auc']:.3f})")
        cascade = entry["randomization_cascade"]
        cascade_ax.plot(range(1, len(cascade) + 1), [step["spearman"] for step in cascade], "o-", label=method)
        cascade_ax.set_xticks(range(1, len(cascade) + 1), [step["layer"] for step in cascade], rotation=60,
                              fontsize=7, ha="right")
    deletion_ax.set(title="deletion (lower is better)", xlabel="fraction of pixels removed", ylabel="probability")
    insertion_ax.set(title="insertion (higher is better)", xlabel="fraction of pixels inserted", ylabel="probability")
    cascade_ax.axhline(FLAG_THRESHOLD, color="grey", linestyle=":", label="flag threshold")
    cascade_ax.set(title="cascading randomisation", xlabel="randomised down to", ylabel="Spearman (signed maps)",
                   ylim=(-1.05, 1.05))
    for ax in (deletion_ax, insertion_ax, cascade_ax):
        ax.legend(fontsize=7)
    figure.suptitle(title or f"explain-check on {report['images']} images")
    return figure


def format_check(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table, one row per method."""
    header = ["method", "deletion AUC", "insertion AUC", "randomisation rho", "(|map|)", "flagged", "lung share"]
    rows = [header] + [
        [method, f"{e['deletion_auc']:.3f}", f"{e['insertion_auc']:.3f}", f"{e['randomization_spearman']:.3f}",
         f"{e['randomization_spearman_abs']:.3f}", "yes" if e["flagged"] else "no",
         "-" if e["lung_share"] is None else f"{e['lung_share']:.3f}"]
        for method, e in report["methods"].items()
    ]
    lines = [format_table(rows)]
    if report.get("lung_area_fraction") is not None:
        lines.append(f"lung fields cover {report['lung_area_fraction']:.3f} of the input (the share of a uniform map)")
    return "\n".join(lines)
