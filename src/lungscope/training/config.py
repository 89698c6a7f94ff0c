"""The training configuration: one dataclass, read from YAML, overridden by flags, written back into the run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lungscope.data.labels import LABEL_SCHEMES
from lungscope.data.transforms import PREPROCESSING_KEYS, AugmentConfig, Preprocessing, preprocessing_option
from lungscope.errors import ConfigError, one_line
from lungscope.evaluation.operating import CALIBRATIONS, DEFAULT_CALIBRATION
from lungscope.options import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Range, check_options, option

EMA_BN = ("recompute", "average")  # what the averaged weights' BatchNorm statistics are
EMA_BN_IMAGES = 512  # training images that recompute them: enough for stable statistics, ~5% of an epoch's cost


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in ``path``; ConfigError in one line naming the file and ``what`` it was to be."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except yaml.MarkedYAMLError as error:  # where the parser stopped, not its multi-line excerpt of the file
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML: {error.problem}{where}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML ({one_line(str(error))})") from None
    except OSError as error:  # a folder, an unreadable file
        raise ConfigError(f"{path}: cannot read the {what} ({error.strerror})") from None


@dataclass
class TrainConfig:
    """Every option of a training run, each declared once (:func:`lungscope.options.option`): its type, choices,
    range and help check a YAML file and make ``lungscope train``'s flags."""

    data: str = option("", help="training data: folder or CSV manifest")
    model: str = option("shallow-cnn", help="registry name (see `lungscope models`)")
    out: str = option("", help="run folder to write")
    labels: str = option("binary", choices=tuple(LABEL_SCHEMES), help="label scheme")
    manifest: str | None = option(None, help="an existing split manifest (path,label,patient_id,split) to train on, "
                                  "instead of a new split")
    extra_train: str | None = option(None, help="a CSV manifest (path,label[,patient_id]) of further images for the "
                                     "training split only, e.g. normal X-rays from other hospitals; never validated "
                                     "or tested on")
    model_options: dict[str, Any] = option(default_factory=dict, help="keyword options of the registry's builder")
    pretrained: str | None = option(None, help="imagenet, lungscope-cxr (the bundled chest X-ray model; cxr-resnet "
                                    "only), PATH of a state dict, or none")
    image_size: int | None = option(None, range=Range(8), default_help="the model's", help="input side")
    resize: str = preprocessing_option("resize")
    clahe: bool = preprocessing_option("clahe")
    roi: str = preprocessing_option("roi")
    roi_margin: float = preprocessing_option("roi_margin")
    normalise: str = preprocessing_option("normalise")
    augment: bool = option(True, help="augment the training images")
    augmentation: dict[str, Any] = option(default_factory=dict,
                                          help="AugmentConfig's strengths; unset keys keep their defaults")
    epochs: int = option(10, range=AT_LEAST_ONE, help="epochs to train")
    batch_size: int = option(32, range=AT_LEAST_ONE,
                             help="images per step (under torchrun: in all, shared by the processes)")
    optimizer: str = option("adam", choices=("adam", "sgd"), help="optimiser")
    lr: float = option(1e-3, range=POSITIVE, help="learning rate")
    momentum: float = option(0.9, range=FRACTION, help="SGD's momentum")
    weight_decay: float = option(0.0, range=NON_NEGATIVE, help="weight decay")
    scheduler: str = option("plateau", choices=("none", "plateau", "cosine"), help="learning-rate schedule")
    plateau_factor: float = option(0.1, range=Range(0, 1, low_included=False, high_included=False),
                                   help="plateau: the factor the learning rate is cut by")
    plateau_patience: int = option(2, range=NON_NEGATIVE, help="plateau: epochs without improvement before a cut")
    early_stopping: int = option(0, range=NON_NEGATIVE, metavar="EPOCHS",
                                 help="stop after this many epochs without improvement; 0 = off")
    monitor: str = option("val_auc", choices=("val_auc", "val_loss", "val_accuracy"),
                          help="the validation metric that picks the best epoch")
    class_weights: bool = option(False, help="weight the loss by inverse class frequency")
    label_smoothing: float = option(0.0, range=FRACTION, help="label smoothing of the loss")
    ema: float = option(0.0, range=FRACTION,
                        help="decay of an exponential moving average of the weights (e.g. 0.999); 0 = off")
    ema_bn: str = option("recompute", choices=EMA_BN,
                         help="the averaged weights' BatchNorm statistics: recompute them on up to "
                         f"{EMA_BN_IMAGES} un-augmented training images before each validation (as SWA does), or "
                         "average them with the weights (torchvision's reference recipe: wrong in short runs of "
                         "nets with a low BatchNorm momentum, e.g. MobileNetV3's 0.01)")
    lung_focus: float = option(0.0, range=NON_NEGATIVE, help="weight of the Grad-CAM-outside-the-lungs penalty "
                               "(lungscope.training.lung_focus); 0 = off")
    channels_last: bool = option(False, help="channels-last memory format (faster convolutions on CPUs with oneDNN)")
    sampler: str = option("none", choices=("none", "weighted"), flag="--weighted-sampler", const="weighted",
                          help="oversample minority classes instead")
    calibration: str = option(DEFAULT_CALIBRATION, choices=CALIBRATIONS,
                              help="fitted on validation when training ends")
    target_sensitivity: float | None = option(None, range=Range(0, 1), metavar="X",
                                              default_help="maximise Youden's J",
                                              help="operating threshold: the most specific one reaching this "
                                              "validation sensitivity")
    freeze_epochs: int = option(0, range=NON_NEGATIVE, help="two-stage fine-tuning: epochs training only the new head")
    finetune_lr: float | None = option(None, range=POSITIVE, default_help="lr / 10", help="stage-two learning rate")
    head_lr_factor: float = option(1.0, range=POSITIVE,
                                   help="while the body trains, the classifier head's lr = the body's lr x this")
    val_fraction: float = option(0.15, range=FRACTION, help="of the patients, for validation")
    test_fraction: float = option(0.15, range=FRACTION, help="of the patients, for testing")
    limit: int | None = option(None, range=AT_LEAST_ONE, metavar="N",
                               help="use at most N images (patient-grouped, stratified): quick runs")
    seed: int = option(0, help="random seed")
    workers: int = option(0, range=NON_NEGATIVE, help="DataLoader worker processes (0: images are preloaded)")
    threads: int | None = option(None, range=AT_LEAST_ONE, default_help="torch's, one per core",
                                 help="torch's intra-op threads for this run")
    device: str = option("auto", help="auto, cpu, cuda, cuda:N or mps")

    def __post_init__(self) -> None:
        check_options(self)
        self.augment_config()  # validates the augmentation mapping
        if self.val_fraction == 0 and self.manifest is None:
            raise ConfigError(
                "val_fraction must be above 0: early stopping, the best checkpoint and the threshold need it"
            )

    def augment_config(self) -> AugmentConfig:
        """The typed augmentation this run trains with."""
        return AugmentConfig.from_dict(self.augmentation)

    def preprocessing(self, image_size: int) -> Preprocessing:
        """The preprocessing this run's model takes, at ``image_size`` (the model's own when the config has none)."""
        return Preprocessing(image_size, **{key: getattr(self, key) for key in PREPROCESSING_KEYS})

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
        values = read_yaml(path, "config file") or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of options, got {type(values).__name__}")
        values.update(overrides)
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
