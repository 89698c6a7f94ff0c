"""Explanations of a trained run on image files: what the ``explain``, ``activations``, ``filters`` and
``explain-check`` commands do."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from lungscope.data.datasets import collect_inputs, find_images
from lungscope.data.io import XRay, read_image, read_mask
from lungscope.data.naming import unique_stems
from lungscope.data.splits import load_manifest
from lungscope.data.transforms import build_preprocess
from lungscope.device import select_device
from lungscope.errors import ConfigError, DatasetError, ImageReadError
from lungscope.explain.api import explain
from lungscope.explain.base import DEFAULT_METHOD, METHODS, get_method, resolve_layer
from lungscope.explain.layers import (
    activation_grid_figure,
    box_region,
    conv_kernels,
    filter_grid_figure,
    layer_activations,
    top_channels,
    top_channels_figure,
)
from lungscope.explain.sanity import check_path, warn_if_untrusted
from lungscope.explain.trust import explain_check, trust_figure
from lungscope.explain.views import (
    default_cmap,
    explanation_figure,
    map_to_image,
    prediction_title,
    signed_view,
)
from lungscope.inference import Classifier
from lungscope.orientation import read_upright
from lungscope.progress import progress_bar
from lungscope.segmentation.segmenter import cached_segmenter

Failure = dict[str, str]


def collect_images(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[Failure]]:
    """Files, folders (recursively) and globs, as ``lungscope predict`` expands them; a path that names nothing
    readable is a failure, not an error."""
    files, failed = collect_inputs(paths)
    return [Path(f) for f in files], failed


def _decide(classifier: Classifier, logits: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """The class the run calls for each image (its operating threshold on a binary run) and the calibrated
    probabilities, as ``lungscope predict`` reports them."""
    probabilities = classifier.probabilities(logits)
    return torch.as_tensor(classifier.decide(probabilities)), probabilities


def _read(classifier: Classifier, path: Path, reader: Callable[[Path], XRay]) -> tuple[np.ndarray, torch.Tensor] | str:
    try:
        pixels = reader(path).pixels
    except ImageReadError as error:
        return error.reason
    return pixels, classifier.transform(pixels)


def _batches(
    classifier: Classifier, paths: Sequence[Path], batch_size: int, reader: Callable[[Path], XRay]
) -> Iterator[list[tuple[Path, tuple[np.ndarray, torch.Tensor] | str]]]:
    """Lists of ``(path, (pixels, model input) or error)``, decoded with ``reader`` in threads: ``read_upright`` for
    a user's X-rays, ``read_image`` for a labelled set whose every image the checks measure."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            yield list(zip(chunk, pool.map(lambda p: _read(classifier, p, reader), chunk)))


def load_run(run: str | os.PathLike[str], device: str = "auto", roi: str | None = None) -> Classifier:
    """The run's classifier with its model on ``device`` (``roi``: see :meth:`Classifier.load`)."""
    classifier = Classifier.load(run, roi=roi)
    classifier.model.to(select_device(device))
    return classifier


def _figure(pixels: np.ndarray, map_: np.ndarray, classifier: Classifier, title: str, style: dict[str, Any]) -> Figure:
    """The X-ray / map / overlay figure on the original image's grid."""
    view = map_to_image(signed_view(map_, style["sign"]), pixels.shape, classifier.preprocessing.resize,
                        classifier.crop_box(pixels))
    return explanation_figure(pixels, view, title=title, **style)


def explain_files(
    run: str | os.PathLike[str],
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    methods: Sequence[str] = (DEFAULT_METHOD,),
    *,
    sign: str = "positive",
    layer: str | None = None,
    batch_size: int = 16,
    device: str = "auto",
    cmap: str | None = None,
    alpha: float = 0.5,
    threshold: float = 0.2,
    progress: bool | None = None,
    roi: str | None = None,
) -> dict[str, Any]:
    """Explain image files and folders with a run: ``OUT/<stem>_<method>.png`` (X-ray, map, overlay on the image
    as read, at most :data:`~lungscope.data.io.WORKING_SIDE` pixels on a side, titled with the prediction; an ROI
    model's map drawn in its lung box) per image and method, and ``OUT/maps.npz`` with the raw signed maps at the
    model's resolution under ``<stem>/<method>``; stems from :func:`~lungscope.data.naming.unique_stems`. Bad files,
    and figures that cannot be written, are listed under ``failed`` and the run goes on.
    A :class:`~lungscope.explain.sanity.SanityWarning` is issued per untrusted method."""
    default_cmap(sign, cmap)  # a bad sign, colormap or method is reported before any work
    for method in methods:
        get_method(method)
        warn_if_untrusted(method, run)
    classifier = load_run(run, device, roi)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images, failed = collect_images(paths)
    stems = dict(zip(images, unique_stems(images)))
    style = {"sign": sign, "cmap": cmap, "alpha": alpha, "threshold": threshold}
    maps: dict[str, np.ndarray] = {}
    written: list[str] = []
    explained = 0
    with progress_bar(total=len(images), show=progress, desc="explain", unit="image") as bar:
        for batch in _batches(classifier, images, batch_size, read_upright):
            failed += [{"path": str(path), "error": item} for path, item in batch if isinstance(item, str)]
            good = [(path, item) for path, item in batch if not isinstance(item, str)]
            explained += len(good)
            if good:
                inputs = torch.stack([tensor for _, (_, tensor) in good])
                with torch.no_grad():
                    logits = classifier.model(inputs.to(next(classifier.model.parameters()).device))
                targets, probs = _decide(classifier, logits)
                for method in methods:
                    explanation = explain(classifier.model, inputs, method, targets, layer, warn=False)
                    for i, (path, (pixels, _)) in enumerate(good):
                        maps[f"{stems[path]}/{method}"] = explanation.maps[i]
                        called = prediction_title(classifier.classes, probs[i], int(targets[i]), classifier.threshold)
                        title = (f"{path.name}: {called}; {method}"
                                 + (f" at {explanation.layer}" if explanation.layer else ""))
                        png = out / f"{stems[path]}_{method}.png"
                        try:
                            _figure(pixels, explanation.maps[i], classifier, title, style).savefig(png, dpi=100)
                        except OSError as error:
                            failed.append({"path": str(path),
                                           "error": f"cannot write {png}: {error.strerror or error}"})
                            continue
                        written.append(str(png))
            bar.update(len(batch))
    np.savez_compressed(out / "maps.npz", **maps)  # type: ignore[arg-type]  # numpy's stub types **kwds poorly
    return {"images": explained, "written": written, "maps": str(out / "maps.npz"), "failed": failed}


def activation_files(
    run: str | os.PathLike[str],
    image: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    layer: str | None = None,
    top: int = 8,
    region: tuple[float, float, float, float] | None = None,
    device: str = "auto",
) -> list[str]:
    """``OUT/<stem>_<layer>_activations.png`` (channel grid) and ``OUT/<stem>_<layer>_top<k>.png`` (the ``top`` most
    active channels overall, or inside ``region``: x0,y0,x1,y1 in fractions of the model input)."""
    classifier = load_run(run, device)
    pixels = read_upright(image).pixels
    inputs = classifier.transform(pixels)[None]
    name, _ = resolve_layer(classifier.model, layer)
    activations = layer_activations(classifier.model, inputs, name)[0]
    channels = top_channels(activations, top, box_region(region) if region else None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (stem,) = unique_stems([image])
    grid = out / f"{stem}_{name}_activations.png"
    activation_grid_figure(activations, title=f"{Path(image).name}: activations of {name}").savefig(grid, dpi=100)
    shown = _on_model_grid(classifier, pixels)
    where = f" in x0,y0,x1,y1 = {region}" if region else ""
    best = out / f"{stem}_{name}_top{len(channels)}.png"
    figure = top_channels_figure(shown, activations, channels,
                                 title=f"{Path(image).name}: most active channels of {name}{where}")
    figure.savefig(best, dpi=100)
    return [str(grid), str(best)]


def filter_files(run: str | os.PathLike[str], out: str | os.PathLike[str], *, layer: str | None = None) -> str:
    """``OUT/filters_<layer>.png``: the kernels of a convolution (default: the first) as a grid."""
    classifier = Classifier.load(run)
    name, weights = conv_kernels(classifier.model, layer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"filters_{name}.png"
    filter_grid_figure(weights, title=f"{name}: {tuple(weights.shape)} kernels").savefig(png, dpi=100)
    return str(png)


def select_images(
    data: str | os.PathLike[str], n: int | None, *, split: str | None = None, seed: int = 0
) -> list[Path]:
    """``n`` images drawn at random (seeded, kept in sorted order) from a folder or a CSV manifest's ``path``
    column (only its ``split`` rows if given); all of them if ``n`` is None or larger."""
    data = Path(data)
    if data.is_file():
        frame = load_manifest(data, required=("path", "split") if split else ("path",))
        if split:
            frame = frame[frame["split"] == split]
        paths = sorted(Path(p) for p in frame["path"])
    elif split:
        raise ConfigError(f"{data}: a split can only be chosen in a CSV manifest, not in a folder")
    else:
        paths = find_images(data)[0]
    if not paths:
        raise DatasetError(f"{data}: no images{f' in split {split!r}' if split else ''}")
    if n is not None and n < len(paths):
        chosen = np.random.default_rng(seed).choice(len(paths), size=n, replace=False)
        paths = [paths[i] for i in sorted(chosen)]
    return paths


def _on_model_grid(classifier: Classifier, pixels: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """``image`` (default: the X-ray ``pixels`` itself; e.g. its lung mask) where the model sees the X-ray: cropped to
    the X-ray's lung box for an ROI model, then resized as the inputs are (no CLAHE, no normalisation)."""
    image = pixels if image is None else image
    if (box := classifier.crop_box(pixels)) is not None:
        top, left, bottom, right = box
        image = image[top:bottom, left:right]
    return build_preprocess(classifier.image_size, resize=classifier.preprocessing.resize)(image)[0].numpy()


def _lung_mask(classifier: Classifier, pixels: np.ndarray, mask_path: Path | None) -> np.ndarray:
    """The X-ray's lung mask on the model input's grid (1 = lung): from ``mask_path``, else from the segmenter."""
    if mask_path is None:
        mask = cached_segmenter().mask(pixels)
    else:
        mask = read_mask(mask_path)
    return (_on_model_grid(classifier, pixels, mask.astype(np.float32)) >= 0.5).astype(np.float32)


def check_files(
    run: str | os.PathLike[str],
    data: str | os.PathLike[str],
    json_out: str | os.PathLike[str],
    *,
    n: int | None = 100,
    masks: str | os.PathLike[str] | None = None,
    split: str | None = None,
    methods: Sequence[str] | None = None,
    layer: str | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device: str = "auto",
    progress: bool | None = None,
) -> dict[str, Any]:
    """:func:`~lungscope.explain.trust.explain_check` of a run on ``n`` images of ``data`` (lung masks of the same
    file names in ``masks``, else the bundled lung U-Net's masks). Writes the report to ``json_out``, its figure
    beside it (``.png``) and a copy to ``RUN_DIR/explain_check.json``, which ``explain`` reads to warn about flagged
    methods."""
    methods = list(methods or METHODS)
    for method in methods:
        get_method(method)
    classifier = load_run(run, device)
    paths = select_images(data, n, split=split, seed=seed)
    inputs, mask_list, failed = [], [], []
    for path, item in (pair for batch in _batches(classifier, paths, batch_size, read_image) for pair in batch):
        mask_path = Path(masks) / path.name if masks else None
        if isinstance(item, str):
            failed.append({"path": str(path), "error": item})
        elif mask_path is not None and not mask_path.is_file():
            failed.append({"path": str(path), "error": f"no lung mask {mask_path}"})
        else:
            inputs.append(item[1])
            mask_list.append(_lung_mask(classifier, item[0], mask_path))
    if not inputs:
        raise DatasetError(f"{data}: none of the {len(paths)} chosen images could be used")
    images = torch.stack(inputs)
    with torch.no_grad():
        targets, _ = _decide(classifier, classifier.model(images.to(next(classifier.model.parameters()).device)))
    report = explain_check(classifier.model, images, targets, np.stack(mask_list),
                           methods, layer=layer, seed=seed, batch_size=batch_size, progress=progress)
    report.update(run=str(run), data=str(data), masks=str(masks) if masks else "lung-unet segmenter", failed=failed)
    json_out = Path(json_out)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2) + "\n"
    json_out.write_text(text)
    if (copy := check_path(run)) is not None:
        copy.write_text(text)
    trust_figure(report, title=f"explain-check of {Path(run).name} on {len(inputs)} images of {data}").savefig(
        json_out.with_suffix(".png"), dpi=100
    )
    return report
