"""The training configuration: one dataclass, read from YAML, overridden by flags, written back into the run."""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from lungscope.data.transforms import NORMALISATIONS, PREPROCESSING_DEFAULTS, ROI_CHOICES, AugmentConfig
from lungscope.errors import ConfigError

_CHOICES = {
    "optimizer": ("adam", "sgd"),
    "scheduler": ("none", "plateau", "cosine"),
    "sampler": ("none", "weighted"),
    "resize": ("squash", "pad"),
    "monitor": ("val_auc", "val_loss", "val_accuracy"),
    "labels": ("binary", "three-class", "tb"),
    "calibration": ("temperature", "temperature+bias"),
    "roi": ROI_CHOICES,
    "normalise": NORMALISATIONS,
}

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
               list: "a list", tuple: "a list", type(None): "null"}


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type an annotation declares (an int is a number; a list serves for a tuple)."""
    origin = typing.get_origin(hint) or hint
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if origin is Any:
        return True
    if origin in (int, float):
        kind = numbers.Integral if origin is int else numbers.Real
        return isinstance(value, kind) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    return not isinstance(origin, type) or isinstance(value, origin)  # e.g. Literal: left to __post_init__


def _type_name(hint: Any) -> str:
    """``a number``, ``an integer or null``...: what an annotation asks for, in a config file's words."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return " or ".join(_TYPE_NAMES.get(typing.get_origin(arg) or arg, str(arg)) for arg in args)


@dataclass
class TrainConfig:
    """Every option of a training run. ``None`` for ``image_size`` means the model's own input size."""

    data: str = ""
    model: str = "shallow-cnn"
    out: str = ""
    labels: str = "binary"
    manifest: str | None = None  # an existing split manifest (path,label,patient_id,split) instead of a new split
    model_options: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    image_size: int | None = None
    resize: str = cast(str, PREPROCESSING_DEFAULTS["resize"])
    clahe: bool = cast(bool, PREPROCESSING_DEFAULTS["clahe"])
    # "lungs": crop each image to its lung fields (the bundled lung U-Net) before resizing
    roi: str = cast(str, PREPROCESSING_DEFAULTS["roi"])
    # of the image's height and width, added around the lungs' box on every side
    roi_margin: float = cast(float, PREPROCESSING_DEFAULTS["roi_margin"])
    # "fixed": (x - 0.5) / 0.25; "per-image": each image by its own mean and std
    normalise: str = cast(str, PREPROCESSING_DEFAULTS["normalise"])
    augment: bool = True
    augmentation: dict[str, Any] = field(default_factory=dict)  # AugmentConfig's strengths; unset keys keep defaults
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "plateau"
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    early_stopping: int = 0  # epochs without improvement before stopping; 0 = off
    monitor: str = "val_auc"
    class_weights: bool = False
    label_smoothing: float = 0.0
    ema: float = 0.0  # decay of an exponential moving average of the weights (e.g. 0.999), validated and kept; 0 = off
    lung_focus: float = 0.0  # weight of the Grad-CAM-outside-the-lungs penalty (lungscope.training.lung_focus); 0 = off
    channels_last: bool = False  # channels-last memory format (faster convolutions on CPUs with oneDNN)
    sampler: str = "none"
    calibration: str = "temperature+bias"  # fitted on validation when training ends: or "temperature" alone
    target_sensitivity: float | None = None  # operating threshold: this sensitivity on validation (default: Youden's J)
    freeze_epochs: int = 0  # two-stage fine-tuning: train only the new head for this many epochs
    finetune_lr: float | None = None  # stage-two learning rate (default lr / 10)
    head_lr_factor: float = 1.0  # while the body trains, the classifier head's lr = the body's lr x this
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    limit: int | None = None  # use at most this many images (a stratified, patient-grouped subset): quick runs
    seed: int = 0
    workers: int = 0
    threads: int | None = None  # torch's intra-op threads for this run (None: torch's default, one per core)
    device: str = "auto"

    def __post_init__(self) -> None:
        for key, hint in typing.get_type_hints(type(self)).items():
            if not _fits(getattr(self, key), hint):
                raise ConfigError(f"config key {key!r} must be {_type_name(hint)}, not {getattr(self, key)!r}")
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "head_lr_factor": self.head_lr_factor}
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{key} must be positive, not {value}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, not {self.threads}")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"image_size must be at least 8, not {self.image_size}")
        self.augment_config()  # validates the augmentation mapping
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), not {self.label_smoothing}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be a decay in [0, 1) (0 = off), not {self.ema}")
        if self.lung_focus < 0:
            raise ConfigError(f"lung_focus must be >= 0 (0 = off), not {self.lung_focus}")
        for key in ("val_fraction", "test_fraction", "roi_margin"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key} must be in [0, 1), not {getattr(self, key)}")
        if self.val_fraction == 0 and self.manifest is None:
            raise ConfigError(
                "val_fraction must be above 0: early stopping, the best checkpoint and the threshold need it"
            )

    def augment_config(self) -> AugmentConfig:
        """The typed augmentation this run trains with."""
        return AugmentConfig.from_dict(self.augmentation)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping, naming any unknown key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except TypeError as error:
            raise ConfigError(str(error)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML file; ``overrides`` win over the file."""
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of options, got {type(values).__name__}")
        values.update(overrides)
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
