"""Training: the config, the epoch loop, checkpoints and run folders, cross-validation and hyper-parameter search."""

from lungscope.training.config import TrainConfig
from lungscope.training.cv import cross_validate
from lungscope.training.trainer import Trainer, resume_config, seed_everything, train
from lungscope.training.tune import DEFAULT_SPACE, load_space, tune

__all__ = [
    "DEFAULT_SPACE", "TrainConfig", "Trainer", "cross_validate", "load_space", "resume_config", "seed_everything",
    "train", "tune",
]
