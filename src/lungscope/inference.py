"""A trained classifier, loaded from a run folder or checkpoint, that predicts on files or arrays."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
from torch import nn
from torchvision.transforms.v2 import functional as TF

from lungscope.bundled import bundled_model
from lungscope.checkpoint import BEST, load_checkpoint
from lungscope.data.io import XRay, read_image
from lungscope.data.labels import decide
from lungscope.data.transforms import ROI_CHOICES, Box, Preprocessing
from lungscope.errors import ConfigError, ImageReadError
from lungscope.models import create_model
from lungscope.orientation import read_upright
from lungscope.segmentation import LungCrop


def checkpoint_path(source: str | os.PathLike[str]) -> Path:
    """The checkpoint file of a run folder (its ``best.pt``), a checkpoint path, or a bundled model's name
    (``default``, ``tb``: :data:`lungscope.bundled.MODELS`)."""
    path = bundled_model(source) or Path(source)
    return path / BEST if path.is_dir() else path


def fingerprint(source: str | os.PathLike[str]) -> str:
    """SHA-256 of a model's checkpoint file: what a site's operating point and a features file are bound to."""
    path = checkpoint_path(source)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def apply_temperature(
    probabilities: np.ndarray, temperature: float, bias: np.ndarray | list[float] | None = None
) -> np.ndarray:
    """Softmax probabilities (N x C) as if the logits had been divided by ``temperature`` (and ``bias`` added).

    ``log p`` equals the logits up to a per-row constant, which softmax ignores, so probabilities suffice.
    """
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    return softmax(logits if bias is None else logits + np.asarray(bias), axis=1)


TTA_VIEWS = 6  # the most views test-time augmentation takes (see tta_views)


def _check_views(views: int) -> None:
    if isinstance(views, bool) or not isinstance(views, int) or not 1 <= views <= TTA_VIEWS:
        raise ConfigError(f"test-time augmentation takes 1 to {TTA_VIEWS} views, not {views!r}")


def tta_views(batch: torch.Tensor, views: int) -> list[torch.Tensor]:
    """``views`` versions of a model-input batch ``(N, C, S, S)``: itself, then a zoom in by 8%, rotations of 4
    degrees either way and shifts of 3% either way (small changes of framing that a radiographer makes anyway)."""
    _check_views(views)
    side = batch.shape[-1]
    shift = round(0.03 * side)
    changes = [(0.0, [0, 0], 1.08), (4.0, [0, 0], 1.0), (-4.0, [0, 0], 1.0), (0.0, [shift, shift], 1.0),
               (0.0, [-shift, -shift], 1.0)]
    out = [batch]
    for angle, translate, scale in changes[: views - 1]:
        out.append(TF.affine(batch, angle=angle, translate=translate, scale=scale, shear=[0.0, 0.0],
                             interpolation=TF.InterpolationMode.BILINEAR))
    return out


@dataclasses.dataclass
class Prediction:
    """One file's class probabilities, or the reason it could not be read. ``spread``: with test-time augmentation
    or an ensemble, the standard deviation of the positive class's probability across views and members (a
    measure of the answer's uncertainty); None for a single pass."""

    path: str
    probabilities: np.ndarray | None
    error: str | None = None
    spread: float | None = None


class Classifier:
    """A model with the preprocessing it was trained with and its operating point. Build with :meth:`load`.

    Probabilities are calibrated (temperature-scaled) unless ``calibrated=False``; ``threshold`` is the decision
    threshold on the calibrated probability of the positive class (binary runs; None decides by the largest).
    """

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        config: dict[str, Any],
        preprocessing: Preprocessing,
        operating_point: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.classes = list(classes)
        self.config = config
        self.preprocessing = preprocessing
        self.image_size = preprocessing.image_size
        self.set_operating_point(operating_point or {})
        self.tta = 1  # test-time augmentation: views per image (see tta_views)
        self.members: list[Classifier] = []  # further ensemble members (see add_members)
        self.roi = LungCrop(preprocessing.roi_margin) if preprocessing.roi == "lungs" else None
        preprocess, normalise = preprocessing.preprocess(), preprocessing.augment_normalise()
        self.transform = lambda pixels: normalise(preprocess(pixels))  # 2-D [0, 1] array -> model input (1, S, S)

    def set_operating_point(self, point: dict[str, Any]) -> None:
        """Use this calibration and threshold (a run's stored ones, or a site's: :mod:`lungscope.sites`)."""
        self.operating_point = dict(point)
        self.temperature = float(point.get("temperature") or 1.0)
        self.bias: list[float] | None = point.get("bias")
        self.threshold: float | None = point.get("threshold_calibrated")
        self.raw_threshold: float | None = point.get("threshold")

    @classmethod
    def load(cls, source: str | os.PathLike[str], *, roi: str | None = None) -> Classifier:
        """From a run folder (its ``best.pt``), a checkpoint file, or ``"default"``: the bundled pneumonia model.
        Weights are loaded with ``weights_only=True``. ``roi`` ("none" or "lungs") replaces the region of interest
        the model was trained with (a warning says so when they differ); None keeps it."""
        state = load_checkpoint(checkpoint_path(source), kind="classifier")
        config, preprocessing = state["config"], Preprocessing.of_checkpoint(state)
        if roi is not None:
            if roi not in ROI_CHOICES:
                raise ConfigError(f"unknown roi {roi!r}; expected one of {', '.join(ROI_CHOICES)}")
            if roi != preprocessing.roi:
                warnings.warn(f"{source} was trained with roi {preprocessing.roi!r}, not {roi!r}: its "
                              "accuracy on these inputs is unmeasured", stacklevel=2)
            config, preprocessing = {**config, "roi": roi}, dataclasses.replace(preprocessing, roi=roi)
        model = create_model(config["model"], num_classes=len(state["classes"]), **config.get("model_options", {}))
        model.load_state_dict(state["model"])
        if config.get("channels_last"):  # the memory format it trained in: faster convolutions on CPUs (oneDNN)
            model = model.to(memory_format=torch.channels_last)
        return cls(model, state["classes"], config, preprocessing, state.get("operating_point"))

    def crop_box(self, pixels: np.ndarray) -> Box | None:
        """Where on a 2-D image the model input comes from: the lungs' box for an ROI model, None for the whole."""
        return self.roi.box(pixels) if self.roi else None

    def probabilities(self, logits: torch.Tensor, calibrated: bool = True) -> np.ndarray:
        """Class probabilities (N x C) of the model's logits, temperature-scaled when ``calibrated``."""
        probabilities = torch.softmax(logits.detach().float().cpu(), dim=1).numpy()
        return self.calibrate(probabilities) if calibrated else probabilities

    def calibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """Apply the run's calibration (temperature, and bias where fitted) to uncalibrated probabilities."""
        return apply_temperature(probabilities, self.temperature, self.bias)

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """The class index called for each row of calibrated probabilities: the operating threshold on a binary
        model that has one, else the most probable class."""
        return decide(probabilities, self.threshold)

    def set_tta(self, views: int) -> None:
        """Average ``views`` test-time views of each image (1: off); see :func:`tta_views`."""
        _check_views(views)
        self.tta = views

    def add_members(self, others: Sequence[Classifier]) -> None:
        """Make this an ensemble: ``others`` (with the same classes and preprocessing) answer beside this model;
        each member's calibrated probabilities are averaged and the decision threshold is the members' mean."""
        for other in others:
            if other.classes != self.classes or other.preprocessing != self.preprocessing:
                raise ConfigError("ensemble members must share classes, image size and preprocessing")
        self.members = [*self.members, *others]
        if self.threshold is not None:
            self.threshold = float(np.mean([self.threshold] + [m.threshold for m in others]))
        if self.raw_threshold is not None:
            self.raw_threshold = float(np.mean([self.raw_threshold] + [m.raw_threshold for m in others]))

    @torch.inference_mode()
    def scores(self, batch: torch.Tensor, calibrated: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (N x classes) of a model-input batch, averaged over the test-time views and the ensemble's
        members, and the spread of the positive class's probability across them (None for a single pass)."""
        answers = [member.probabilities(member.model(view), calibrated)
                   for member in (self, *self.members) for view in tta_views(batch, self.tta)]
        stacked = np.stack(answers)
        spread = stacked[..., -1].std(axis=0) if len(answers) > 1 else None
        return stacked.mean(axis=0), spread

    def predict_arrays(self, images: Iterable[np.ndarray], *, calibrated: bool = True) -> np.ndarray:
        """Probabilities (N x classes) of 2-D float [0, 1] images, as :func:`read_image` returns them."""
        return self.scores(torch.stack([self.transform(image) for image in images]), calibrated)[0]

    def _read(self, path: str, reader: Callable[[str], XRay]) -> torch.Tensor | str:
        try:
            return self.transform(reader(path).pixels)
        except ImageReadError as error:
            return error.reason

    def decoded_batches(
        self, paths: Sequence[str], *, batch_size: int = 32, workers: int | None = None,
        reader: Callable[[str], XRay] = read_image,
    ) -> Iterator[list[tuple[str, torch.Tensor | str]]]:
        """``(path, model input or the reason it could not be read)`` in the order of ``paths``, ``batch_size`` at a
        time; files decode (with ``reader``) in threads while the caller works on the previous batch, at most a few
        batches ahead."""
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            pending: deque[tuple[str, Future[torch.Tensor | str]]] = deque()
            iterator = iter(paths)
            for path in iterator:
                pending.append((str(path), pool.submit(self._read, str(path), reader)))
                if len(pending) >= 3 * batch_size:
                    break
            while pending:
                chunk = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                for path in iterator:  # keep the decoders busy while this batch runs
                    pending.append((str(path), pool.submit(self._read, str(path), reader)))
                    if len(pending) >= 2 * batch_size:
                        break
                yield [(path, future.result()) for path, future in chunk]

    def predict_files(
        self, paths: Sequence[str], *, batch_size: int = 32, workers: int | None = None, calibrated: bool = True,
        upright: bool = True,
    ) -> Iterator[Prediction]:
        """Predictions in the order of ``paths``; files decode in threads while the model runs. A bad file, or (with
        ``upright``) an X-ray the orientation check refuses (:func:`~lungscope.orientation.read_upright`), yields a
        :class:`Prediction` with ``error`` set and the rest go on. Evaluation and calibration on a labelled set pass
        ``upright=False``: they measure the model on every image of the set."""
        reader = read_upright if upright else read_image
        for results in self.decoded_batches(paths, batch_size=batch_size, workers=workers, reader=reader):
            good = [(path, tensor) for path, tensor in results if isinstance(tensor, torch.Tensor)]
            answers: dict[str, tuple[np.ndarray, float | None]] = {}
            if good:
                probabilities, spread = self.scores(torch.stack([tensor for _, tensor in good]), calibrated)
                spreads = [None] * len(good) if spread is None else [float(s) for s in spread]
                answers = {path: (p, s) for (path, _), p, s in zip(good, probabilities, spreads)}
            for path, result in results:
                if isinstance(result, str):
                    yield Prediction(path, None, result)
                else:
                    yield Prediction(path, *answers[path][:1], spread=answers[path][1])
