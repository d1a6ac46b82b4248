"""Training: config, loop, callbacks, checkpoints and resume."""

from binsense.train.callbacks import Callback, DistillCallback, PruneCallback
from binsense.train.checkpoint import load_checkpoint, load_model
from binsense.train.config import TrainConfig, TrainNoise
from binsense.train.trainer import Hooks, TrainResult, environment_info, train

__all__ = [
    "Callback",
    "DistillCallback",
    "Hooks",
    "PruneCallback",
    "TrainConfig",
    "TrainNoise",
    "TrainResult",
    "environment_info",
    "load_checkpoint",
    "load_model",
    "train",
]
