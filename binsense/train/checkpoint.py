"""Checkpoints: atomic save, safe load (``weights_only=True``), model rebuild."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from binsense.data import dataset_info
from binsense.errors import CheckpointError
from binsense.io import safe_torch_load
from binsense.models import build_model
from binsense.train.config import TrainConfig

CHECKPOINT_FORMAT = 1


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a binsense checkpoint (no code is executed) and check its format."""
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a binsense checkpoint (format {CHECKPOINT_FORMAT}); "
            "point --checkpoint at a run's checkpoint.pt."
        )
    return ckpt


def load_state_strict(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """``model.load_state_dict`` with a clear error when the checkpoint does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        detail = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
            if unexpected
            else f"shape mismatch at {shapes[0]}: checkpoint {tuple(state[shapes[0]].shape)} "
            f"vs model {tuple(own[shapes[0]].shape)}"
        )
        raise CheckpointError(
            f"checkpoint {source!r} does not match the model ({detail}); "
            "use the model name and options it was trained with."
        )
    model.load_state_dict(state)


def checkpoint_config(ckpt: dict[str, Any], path: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` a checkpoint was trained with (clear error if invalid)."""
    try:
        return TrainConfig(**ckpt["config"])
    except Exception:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds an invalid config; it was written by an "
            "incompatible binsense version — retrain it."
        ) from None


def load_model(path: str | os.PathLike) -> tuple[nn.Module, TrainConfig]:
    """Rebuild the model stored in a checkpoint, in eval mode, with its config."""
    ckpt = load_checkpoint(path)
    config = checkpoint_config(ckpt, path)
    model = build_model(config.model, dataset_info(config.dataset), **config.model_options)
    load_state_strict(model, ckpt["model"], str(path))
    model.eval()
    return model, config


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """Where a run folder keeps its checkpoint."""
    return Path(run_dir) / "checkpoint.pt"
