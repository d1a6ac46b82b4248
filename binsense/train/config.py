"""Training configuration: a validated, serialisable record of one training run."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """Everything that determines a training run (same config + seed = same model).

    ``model_options`` are passed to the model builder (e.g. ``{"width": 0.25}``);
    ``train_subset`` / ``test_subset`` keep the first *n* images per class (after a seeded
    shuffle) for quick runs; ``threads`` sets ``torch.set_num_threads`` (``None`` keeps
    PyTorch's default).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = "mnist"
    model: str = "mnist_bnn"
    model_options: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "onecycle"] = "onecycle"
    warmup: float = Field(0.25, ge=0, lt=1, description="onecycle: fraction of steps warming up")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    crop_padding: int = Field(0, ge=0)
    flip: bool = False
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def config_hash(self) -> str:
        """Content hash of the fields that change the trained model (not device/threads)."""
        d = self.to_dict()
        for k in ("device", "threads"):
            d.pop(k)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
