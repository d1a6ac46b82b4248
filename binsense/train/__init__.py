"""Training: config, loop, checkpoints and resume."""

from binsense.train.checkpoint import load_checkpoint, load_model
from binsense.train.config import TrainConfig, TrainNoise
from binsense.train.trainer import TrainResult, environment_info, train

__all__ = [
    "TrainConfig",
    "TrainNoise",
    "TrainResult",
    "environment_info",
    "load_checkpoint",
    "load_model",
    "train",
]
