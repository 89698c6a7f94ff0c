"""Training: the config, the epoch loop, checkpoints and run folders."""

from lungscope.training.config import TrainConfig
from lungscope.training.trainer import Trainer, resume_config, seed_everything, train

__all__ = ["TrainConfig", "Trainer", "resume_config", "seed_everything", "train"]
