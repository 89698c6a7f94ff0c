"""Training: the config, the epoch loop, checkpoints and run folders, cross-validation.

Hyper-parameter search is :mod:`lungscope.training.tune` (it imports Optuna), the head on extracted features
:mod:`lungscope.training.head`, the lung segmenter :mod:`lungscope.training.segmenter`.
"""

from lungscope.training.config import TrainConfig
from lungscope.training.cv import cross_validate
from lungscope.training.trainer import Trainer, resume_config, seed_everything, train

__all__ = ["TrainConfig", "Trainer", "cross_validate", "resume_config", "seed_everything", "train"]
