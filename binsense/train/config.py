"""Training configuration: a validated, serialisable record of one training run."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from binsense.noise import NoiseAugment, get_noise_type


class TrainNoise(BaseModel):
    """Noise-aware training: sensor fixed-pattern noise drawn fresh for each batch/sample.

    ``type`` is one FPN type or a list (picked with equal probability); ``level`` is the
    sigma as a fraction of full scale, fixed (``0.05``) or drawn uniformly from a range
    (``[0.05, 0.10]``, binsense's reading of S0's "training with 5-10 % noise");
    ``p_clean`` is the probability that an instance stays clean. See
    :class:`binsense.noise.NoiseAugment`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str | list[str]
    level: float | tuple[float, float] = Field(..., description="sigma, fraction of full scale")
    per: Literal["batch", "sample"] = "batch"
    p_clean: float = Field(0.0, ge=0, le=1)
    per_channel: bool = False
    adc_bits: int | None = 8

    @field_validator("type")
    @classmethod
    def _known_types(cls, v: str | list[str]) -> str | list[str]:
        for name in [v] if isinstance(v, str) else v:
            get_noise_type(name)  # raises a clear error naming the closest type
        return v

    def augment(self, seed: int) -> NoiseAugment:
        """The :class:`NoiseAugment` that applies this spec, seeded with ``seed``."""
        types = [self.type] if isinstance(self.type, str) else self.type
        level = tuple(self.level) if isinstance(self.level, (tuple, list)) else self.level
        return NoiseAugment(
            [(t, level, 1.0) for t in types],
            per=self.per,
            p_clean=self.p_clean,
            seed=seed,
            per_channel=self.per_channel,
            adc_bits=self.adc_bits,
        )


class TrainConfig(BaseModel):
    """Everything that determines a training run (same config + seed = same model).

    ``model_options`` are passed to the model builder (e.g. ``{"width": 0.25}``);
    ``train_noise`` turns on noise-aware training (:class:`TrainNoise`; ``"none"`` or
    ``None`` is clean training);
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
    train_noise: TrainNoise | None = None
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    device: str = "cpu"

    @field_validator("train_noise", mode="before")
    @classmethod
    def _none_is_clean(cls, v: Any) -> Any:
        """``"none"`` means clean training (TOML has no null, so a grid can list it)."""
        return None if v == "none" else v

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def config_hash(self) -> str:
        """Content hash of the fields that change the trained model (not device/threads)."""
        d = self.to_dict()
        for k in ("device", "threads"):
            d.pop(k)
        if d["train_noise"] is None:  # off: leave out, so ids of runs from before it stay
            d.pop("train_noise")
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
