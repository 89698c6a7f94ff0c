"""Preprocessing and augmentation of chest X-rays, and class balancing for training.

Every pipeline takes the 2-D float32 array in [0, 1] that :func:`lungscope.data.io.read_image` returns and gives a
float32 tensor ``(channels, S, S)``: to tensor -> (lung crop) -> (CLAHE) -> resize -> (augment) -> normalise ->
repeat channels.
Random steps use torchvision.transforms.v2, hence torch's RNG: ``torch.manual_seed`` makes them reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import Any, Protocol, TypeVar

import cv2
import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import WeightedRandomSampler
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from lungscope.errors import ConfigError, DatasetError
from lungscope.options import FRACTION, Range, check_options, option

RESIZE_MODES = ("squash", "pad")
ROI_CHOICES = ("none", "lungs")
Box = tuple[int, int, int, int]  # top, left, bottom, right: rows top..bottom-1, columns left..right-1

ImageT = TypeVar("ImageT", np.ndarray, torch.Tensor)


class Clahe:
    """Contrast-limited adaptive histogram equalisation (OpenCV) of a float [0, 1] image.

    Takes and returns the same type and shape: a numpy array or tensor, ``(H, W)`` or ``(1, H, W)``, values in [0, 1].

    Works at 8-bit precision. OpenCV scales ``clip_limit`` by tile pixels / histogram bins, so at 16 bits
    (65,536 bins) the usual 2.0 floors to one count per bin and the result is nearly the input; and whether the limit
    bites at all would depend on the bit depth the file came with. At 8 bits ``clip_limit`` means what it means
    in the literature for every source; the cost is that 12/16-bit DICOM is quantised to 256 levels here.
    """

    def __init__(self, clip_limit: float = 2.0, tile_grid: int = 8) -> None:
        if not clip_limit > 0:
            raise ConfigError(f"CLAHE clip_limit must be > 0, got {clip_limit}")
        if tile_grid < 1:
            raise ConfigError(f"CLAHE tile_grid must be >= 1, got {tile_grid}")
        self.clip_limit = float(clip_limit)
        self.tile_grid = int(tile_grid)

    def __call__(self, image: ImageT) -> ImageT:
        pixels = image.numpy(force=True) if isinstance(image, torch.Tensor) else np.asarray(image)
        plane = pixels.reshape(pixels.shape[-2:])
        as_bytes = np.rint(np.clip(plane, 0.0, 1.0) * 255).astype(np.uint8)
        # A cv2.CLAHE object cannot be pickled (DataLoader workers under spawn); creating one per call is cheap.
        clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(self.tile_grid, self.tile_grid))
        result = (clahe.apply(as_bytes).astype(np.float32) / 255).reshape(pixels.shape)
        return torch.from_numpy(result) if isinstance(image, torch.Tensor) else result

    def __repr__(self) -> str:
        return f"{type(self).__name__}(clip_limit={self.clip_limit}, tile_grid={self.tile_grid})"


class ResizeImage:
    """Resize a ``(C, H, W)`` tensor to ``(C, size, size)``, antialiased (bilinear).

    ``"squash"`` ignores the aspect ratio; ``"pad"`` keeps it, scaling the longer side to ``size`` and
    letterboxing the shorter one with zeros (black), the image centred.
    """

    def __init__(self, size: int, mode: str = "squash") -> None:
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"image size must be a positive integer, got {size!r}")
        if mode not in RESIZE_MODES:
            raise ConfigError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")
        self.size = int(size)
        self.mode = mode

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.mode == "squash":
            return F.resize(image, [self.size, self.size], antialias=True)
        fitted = F.resize(image, None, max_size=self.size, antialias=True)
        return F.center_crop(fitted, [self.size, self.size])  # a crop larger than the image pads it with zeros

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, mode={self.mode!r})"


class RoiCrop(Protocol):
    """A region-of-interest step: crops a ``(1, H, W)`` [0, 1] tensor; ``box`` says where the crop lies on an image
    (None: the whole image)."""

    def box(self, pixels: np.ndarray | torch.Tensor) -> Box | None: ...

    def __call__(self, image: torch.Tensor) -> torch.Tensor: ...


# roi name -> the crop step's builder (taking the margin). The segmentation layer registers "lungs" when it is
# imported (lungscope.segmentation.roi), so this layer needs no segmenter.
_ROI_CROPS: dict[str, Callable[[float], RoiCrop]] = {}


def register_roi_crop(roi: str, build: Callable[[float], RoiCrop]) -> None:
    """Make ``build(margin)`` the crop step of ``roi`` (one of :data:`ROI_CHOICES` other than ``"none"``)."""
    if roi not in ROI_CHOICES or roi == "none":
        raise ConfigError(f"cannot register a crop for roi {roi!r}; expected one of {', '.join(ROI_CHOICES[1:])}")
    _ROI_CROPS[roi] = build


def roi_crop(roi: str, margin: float = 0.05) -> RoiCrop | None:
    """The crop step of ``roi`` with ``margin``, or None for ``"none"``."""
    if roi not in ROI_CHOICES:
        raise ConfigError(f"unknown roi {roi!r}; expected one of {', '.join(ROI_CHOICES)}")
    if roi == "none":
        return None
    if roi not in _ROI_CROPS:
        raise ConfigError(f"roi {roi!r} needs its crop step: import lungscope.segmentation, which registers it")
    return _ROI_CROPS[roi](margin)


NORMALISATIONS = ("fixed", "per-image")


@dataclass(frozen=True)
class Preprocessing:
    """How an X-ray becomes a model's input, augmentation aside: the one declaration that training, inference, the
    two-stage head, explanations and exports read, stored in every classifier checkpoint (``preprocessing``).

    ``roi="lungs"`` crops each X-ray to its lung fields grown by ``roi_margin`` of its sides before CLAHE and resizing;
    ``normalise="fixed"`` is ``(x - 0.5) / 0.25``, ``"per-image"`` each image by its own mean and standard deviation.
    """

    image_size: int = option(range=Range(8), help="input side")
    resize: str = option("squash", choices=RESIZE_MODES, help="squash to the square, or pad to it first")
    clahe: bool = option(False, help="contrast-limited adaptive histogram equalisation")
    roi: str = option("none", choices=ROI_CHOICES,
                      help="lungs: crop each X-ray to its lung fields (the bundled lung U-Net) before resizing")
    roi_margin: float = option(0.05, range=FRACTION,
                               help="of the image's height and width, added around the lungs' box on every side")
    normalise: str = option("fixed", choices=NORMALISATIONS,
                            help="fixed: (x - 0.5) / 0.25; per-image: each image by its own mean and std")

    def __post_init__(self) -> None:
        check_options(self)

    @classmethod
    def of(cls, config: Mapping[str, object], image_size: int) -> Preprocessing:
        """The preprocessing a run config states (older runs lack some keys: their defaults)."""
        return cls(image_size, **{key: config[key] for key in PREPROCESSING_KEYS if key in config})  # type: ignore[arg-type]

    @classmethod
    def of_checkpoint(cls, state: Mapping[str, Any]) -> Preprocessing:
        """A classifier checkpoint's: its ``preprocessing`` entry, or (checkpoints written before it had one) its
        config's keys at its ``image_size``."""
        if "preprocessing" in state:
            return cls(**state["preprocessing"])
        return cls.of(state["config"], state["image_size"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def preprocess(self) -> v2.Compose:
        """The deterministic part up to the resized [0, 1] tensor: see :func:`build_preprocess`."""
        return build_preprocess(self.image_size, resize=self.resize, clahe=self.clahe, roi=self.roi,
                                roi_margin=self.roi_margin)

    def augment_normalise(self, *, train: bool = False, augment: AugmentConfig | None = None,
                          channels: int = 1) -> v2.Compose:
        """The per-epoch part: see :func:`build_augment_normalise`."""
        return build_augment_normalise(train=train, augment=augment, normalise=self.normalise, size=self.image_size,
                                       channels=channels)


# The run-config keys that shape a model's input besides its image size: whatever reuses a model (a two-stage head on
# its backbone, an ensemble member, an export) carries or matches these.
PREPROCESSING_KEYS = tuple(f.name for f in fields(Preprocessing) if f.name != "image_size")


def preprocessing_option(name: str) -> Any:
    """A config dataclass's field for the preprocessing option ``name``: :class:`Preprocessing`'s own declaration
    (default, choices, range, help), so that a training run's options and a checkpoint's spec cannot drift apart."""
    declared = next(f for f in fields(Preprocessing) if f.name == name)
    return field(default=declared.default, metadata=declared.metadata)


class RandomGamma(v2.Transform):
    """``x ** g`` with ``log g`` uniform in ``[-strength, strength]``, on images only (masks pass through): the
    non-linear contrast change between detectors and look-up tables. Written here because torchvision has
    ``adjust_gamma`` but no random gamma transform."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.strength = float(strength)

    def make_params(self, flat_inputs: list[object]) -> dict[str, float]:
        return {"gamma": math.exp(float(torch.empty(1).uniform_(-self.strength, self.strength)))}

    def transform(self, inpt: torch.Tensor, params: dict[str, float]) -> torch.Tensor:
        return F.adjust_gamma(inpt.clamp(0, 1), params["gamma"])


class JpegRecompression(v2.Transform):
    """JPEG re-compression at a random quality in ``[quality, 95]``, on float [0, 1] images (torchvision's ``JPEG``
    takes 8-bit images only: this wraps it with the conversion there and back); masks pass through."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, quality: int) -> None:
        super().__init__()
        self.jpeg = v2.JPEG((int(quality), 95))

    def transform(self, inpt: torch.Tensor, params: dict[str, object]) -> torch.Tensor:
        as_bytes = (inpt.clamp(0, 1) * 255).round().to(torch.uint8)
        return tv_tensors.wrap(self.jpeg(as_bytes.as_subclass(torch.Tensor)).float() / 255, like=inpt)


class PerImageStandardize(v2.Transform):
    """``(x - mean(x)) / std(x)`` per image: the input no longer depends on a device's overall brightness and
    contrast (a linear change of the grey levels leaves it unchanged)."""

    _transformed_types = (tv_tensors.Image, torch.Tensor)

    def transform(self, inpt: torch.Tensor, params: dict[str, object]) -> torch.Tensor:
        if isinstance(inpt, tv_tensors.Mask):
            return inpt
        mean = inpt.mean(dim=(-2, -1), keepdim=True)
        std = inpt.std(dim=(-2, -1), keepdim=True)
        return (inpt - mean) / std.clamp_min(1e-3)


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation for training, applied after resizing and before normalisation; each strength 0 is off.

    Geometry (applied alike to the image and its lung mask): rotation, maximum degrees either way; scale, zoom range
    (low, high); shift, maximum translation as a fraction of width/height; crop, the smallest area fraction of a random
    resized crop (1 = off); hflip is off by default: a horizontally flipped chest X-ray puts the heart on the wrong
    side (dextrocardia), an anatomy the model should not learn as normal; turn it on only if you know why.
    Grey levels (images only; each but brightness/contrast applied with probability ``p``): brightness, contrast,
    jitter strength, the factor drawn from [1 - x, 1 + x]; gamma, log-gamma range; blur, the largest Gaussian sigma
    in pixels; sharpen, the sharpness factor (2 doubles the detail); noise, Gaussian noise sigma; jpeg, the lowest
    JPEG quality of a re-compression (0 = off).
    """

    rotation: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.1
    crop: float = 1.0
    hflip: bool = False
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.0
    blur: float = 0.0
    sharpen: float = 0.0
    noise: float = 0.0
    jpeg: int = 0
    p: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.rotation <= 180:
            raise ConfigError(f"augment rotation must be within [0, 180] degrees, got {self.rotation}")
        scale = tuple(self.scale)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ConfigError(f"augment scale must be (low, high) with 0 < low <= high, got {self.scale}")
        object.__setattr__(self, "scale", (float(scale[0]), float(scale[1])))  # a YAML list becomes a tuple
        bounds = {"shift": (0, 1), "brightness": (0, 1), "contrast": (0, 1), "gamma": (0, 1), "p": (0, 1),
                  "blur": (0, 10), "sharpen": (0, 10), "noise": (0, 0.5), "jpeg": (0, 95)}
        for name, (low, high) in bounds.items():
            if not low <= getattr(self, name) <= high:
                raise ConfigError(f"augment {name} must be within [{low}, {high}], got {getattr(self, name)}")
        if not 0 < self.crop <= 1:
            raise ConfigError(f"augment crop must be an area fraction in (0, 1], got {self.crop}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> AugmentConfig:
        """From a config's ``augmentation`` mapping, naming an unknown key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values or {}) - known)
        if unknown:
            raise ConfigError(f"unknown augmentation key(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**(values or {}))

    def transforms(self, size: int) -> list[Callable[..., object]]:
        """The torchvision v2 steps this configuration describes, for ``size`` x ``size`` images."""
        steps: list[Callable[..., object]] = [
            v2.RandomAffine(
                degrees=self.rotation,
                translate=(self.shift, self.shift),
                scale=self.scale,
                interpolation=v2.InterpolationMode.BILINEAR,
                fill=0.0,
            )
        ]
        if self.crop < 1:
            steps.append(v2.RandomResizedCrop(size, scale=(self.crop, 1.0), ratio=(0.8, 1.25), antialias=True))
        if self.hflip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        steps.append(v2.ColorJitter(brightness=self.brightness, contrast=self.contrast))
        optional: list[Callable[..., object]] = []
        if self.gamma:
            optional.append(RandomGamma(self.gamma))
        if self.blur:
            optional.append(v2.GaussianBlur(5, sigma=(0.1, self.blur)))
        if self.sharpen:
            optional.append(v2.RandomAdjustSharpness(self.sharpen, p=1.0))
        if self.noise:
            optional.append(v2.GaussianNoise(sigma=self.noise, clip=False))
        if self.jpeg:
            optional.append(JpegRecompression(self.jpeg))
        steps.extend(v2.RandomApply([step], p=self.p) for step in optional)
        return steps


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """The ``(1, H, W)`` float32 tensor of a 2-D image array (a copy: the caller's array is never touched)."""
    array = np.asarray(pixels)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected a non-empty 2-D grayscale image array, got shape {array.shape}")
    image = torch.tensor(array, dtype=torch.float32).unsqueeze(0)
    if not torch.isfinite(image).all():  # else every probability of it would be NaN, with no word why
        raise ValueError("the image array holds non-finite values (NaN or infinity)")
    return image


def _repeat_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    return image.repeat(channels, 1, 1)


def build_preprocess(
    image_size: int, *, resize: str = "squash", clahe: bool = False, roi: str = "none", roi_margin: float = 0.05
) -> v2.Compose:
    """The deterministic part: a 2-D float [0, 1] array to a ``(1, image_size, image_size)`` tensor in [0, 1].

    ``roi="lungs"`` first crops the image to its lung fields (:class:`lungscope.segmentation.LungCrop`, the box grown
    by ``roi_margin`` of the image's sides; see :func:`roi_crop`), so CLAHE and resizing see only the chest. Its
    output can be cached across epochs (see :class:`lungscope.data.datasets.XRayDataset`).
    """
    crop = roi_crop(roi, roi_margin)
    steps: list[Callable[[Any], torch.Tensor]] = [_to_tensor]
    if crop is not None:
        steps.append(crop)
    if clahe:
        steps.append(Clahe())
    steps.append(ResizeImage(image_size, resize))
    return v2.Compose(steps)


def build_augment_normalise(
    *,
    train: bool,
    augment: AugmentConfig | None = None,
    mean: float = 0.5,
    std: float = 0.25,
    channels: int = 1,
    normalise: str = "fixed",
    size: int | None = None,
) -> v2.Compose:
    """The per-epoch part: (training only) augmentation, then normalisation, then ``channels`` copies.

    ``normalise="fixed"`` is ``(x - mean) / std``; ``"per-image"`` standardises each image by its own mean and
    standard deviation. Called with ``(image, mask)`` (``tv_tensors.Image``, ``tv_tensors.Mask``), the geometric
    steps move the mask with the image. ``size`` (the images' side) is needed only by a random resized crop.
    """
    if not std > 0:
        raise ConfigError(f"normalisation std must be > 0, got {std}")
    if channels < 1:
        raise ConfigError(f"channels must be >= 1, got {channels}")
    if normalise not in NORMALISATIONS:
        raise ConfigError(f"unknown normalise {normalise!r}; expected one of {', '.join(NORMALISATIONS)}")
    steps: list[Callable[..., object]] = []
    if train:
        augment = augment or AugmentConfig()
        if augment.crop < 1 and size is None:
            raise ConfigError("a random resized crop needs the image size")
        steps.extend(augment.transforms(size or 0))
    steps.append(v2.Normalize(mean=[float(mean)], std=[float(std)]) if normalise == "fixed" else PerImageStandardize())
    if channels > 1:
        steps.append(partial(_repeat_channels, channels=channels))  # a closure would not pickle for workers
    return v2.Compose(steps)


def build_transforms(
    image_size: int,
    *,
    train: bool,
    resize: str = "squash",
    clahe: bool = False,
    augment: AugmentConfig | None = None,
    mean: float = 0.5,
    std: float = 0.25,
    channels: int = 1,
) -> Callable[[np.ndarray], torch.Tensor]:
    """The pipeline from a 2-D float [0, 1] array to a normalised float32 tensor ``(channels, image_size, image_size)``:
    :func:`build_preprocess` then :func:`build_augment_normalise`.

    ``train=True`` augments (with ``augment``, or ``AugmentConfig()`` if None); ``train=False`` is deterministic and
    ignores ``augment``. Normalisation is ``(x - mean) / std``; the single channel is then repeated ``channels`` times
    (3 for ImageNet-pretrained backbones).
    """
    tail = build_augment_normalise(train=train, augment=augment, mean=mean, std=std, channels=channels)
    return v2.Compose([build_preprocess(image_size, resize=resize, clahe=clahe), tail])


def _label_indices(labels: Sequence[str] | Sequence[int], classes: Sequence[str]) -> np.ndarray:
    """Each label's index in ``classes``; labels are class names or indices into ``classes``."""
    classes = list(classes)
    if not classes:
        raise ConfigError("no classes given")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"duplicate class names in {classes}")
    if len(labels) == 0:
        raise DatasetError("no labels: the training set is empty")
    position = {name: i for i, name in enumerate(classes)}
    indices = []
    for label in labels:
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            index = int(label)
            if not 0 <= index < len(classes):
                raise DatasetError(f"label index {index} is out of range for classes {classes}")
        elif label in position:
            index = position[label]
        else:
            raise DatasetError(f"unknown label {label!r}; expected one of {classes}")
        indices.append(index)
    indices_array = np.asarray(indices)
    counts = np.bincount(indices_array, minlength=len(classes))
    missing = [name for name, count in zip(classes, counts) if count == 0]
    if missing:
        # A class without examples cannot be weighted (sklearn refuses, n / 0) nor learnt: a wrong folder or list.
        raise DatasetError(f"no examples of class {', '.join(map(repr, missing))} among {len(labels)} labels")
    return indices_array


def _balanced(indices: np.ndarray, n_classes: int) -> np.ndarray:
    return compute_class_weight("balanced", classes=np.arange(n_classes), y=indices)


def class_weights(labels: Sequence[str] | Sequence[int], classes: Sequence[str]) -> torch.Tensor:
    """Per-class loss weights, in ``classes`` order: sklearn's 'balanced', ``n_samples / (n_classes * count)``.

    Raises DatasetError if a label is not among ``classes`` or a class has no labels.
    """
    weights = _balanced(_label_indices(labels, classes), len(classes))
    return torch.as_tensor(weights, dtype=torch.float32)


def weighted_sampler(
    labels: Sequence[str] | Sequence[int],
    classes: Sequence[str],
    *,
    num_samples: int | None = None,
    seed: int = 0,
) -> WeightedRandomSampler:
    """A sampler drawing ``num_samples`` (default: ``len(labels)``) indices with replacement, classes equally likely.

    Its generator is seeded: the same seed gives the same sequence of epochs.
    """
    if num_samples is not None and num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    indices = _label_indices(labels, classes)
    per_sample = torch.as_tensor(_balanced(indices, len(classes))[indices])
    generator = torch.Generator().manual_seed(seed)
    # torch's stub says Sequence[float]; the sampler takes a tensor of weights (torch.as_tensor is its first step)
    return WeightedRandomSampler(per_sample, num_samples or len(labels), replacement=True,  # type: ignore[arg-type]
                                 generator=generator)
