"""Training configuration: a validated, serialisable record of one training run."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from binsense.errors import BinsenseError
from binsense.noise import NoiseAugment, get_noise_type
from binsense.resources import MAX_THREADS, resolve_device

#: Largest seed: what a SQLite INTEGER (the study store) and ``torch.manual_seed`` hold.
SEED_MAX = 2**63 - 1

#: Validation context that also checks that ``device`` exists on this machine:
#: ``TrainConfig.model_validate(fields, context=CHECK_DEVICE)`` (the CLI's ``train``).
#: Without it only the device's syntax is checked, so a checkpoint or a study trained on
#: a GPU can still be read, evaluated or reported on a machine without one.
CHECK_DEVICE = {"check_device": True}


def _full_scale_level(value: float) -> float:
    """A noise level (sigma, fraction of full scale): finite, >= 0 and at most 1."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"level must be a finite number >= 0, got {value}")
    if value > 1:
        raise ValueError(
            f"level {value:g} is {value * 100:g} % of full scale (level is sigma as a fraction "
            f"of full scale: 0.05 = 5 %); levels above 1 are refused — did you mean "
            f"{value / 100:g}?"
        )
    return value


class TrainNoise(BaseModel):
    """Noise-aware training: sensor fixed-pattern noise drawn fresh for each batch/sample.

    ``type`` is one FPN type or a list (picked with equal probability); ``level`` is the
    sigma as a fraction of full scale, fixed (``0.05``) or drawn uniformly from a range
    (``[0.05, 0.10]``, binsense's reading of S0's "training with 5-10 % noise");
    ``p_clean`` is the probability that an instance stays clean. See
    :class:`binsense.noise.NoiseAugment`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

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

    @field_validator("level", mode="before")
    @classmethod
    def _range_as_tuple(cls, v: Any) -> Any:
        """A TOML/JSON range ``[lo, hi]`` is a list; strict mode wants the tuple."""
        return tuple(v) if isinstance(v, list) else v

    @field_validator("level")
    @classmethod
    def _level_in_full_scale(cls, v: float | tuple[float, float]) -> float | tuple[float, float]:
        if isinstance(v, tuple):
            lo, hi = (_full_scale_level(x) for x in v)
            if hi < lo:
                raise ValueError(f"level range [{lo:g}, {hi:g}] must have low <= high")
            return v
        return _full_scale_level(v)

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
    PyTorch's default; at most :data:`~binsense.resources.MAX_THREADS`).

    Validation is strict: values are never coerced (``epochs = true``, ``batch_size =
    "32"`` and ``lr = "0.1"`` are errors; an integer is accepted where a number is
    expected, ``lr = 1``); numbers must be finite. ``seed`` is in ``[0, 2**63 - 1]``.
    ``device`` must name a device binsense runs on (``cpu``, ``cuda``, ``cuda:N``,
    ``mps``); whether it exists on this machine is checked only with the
    :data:`CHECK_DEVICE` validation context (see
    :func:`binsense.resources.resolve_device`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

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
    seed: int = Field(0, ge=0, le=SEED_MAX)
    threads: int | None = Field(None, ge=1, le=MAX_THREADS)
    device: str = "cpu"

    @field_validator("train_noise", mode="before")
    @classmethod
    def _none_is_clean(cls, v: Any) -> Any:
        """``"none"`` means clean training (TOML has no null, so a grid can list it)."""
        return None if v == "none" else v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str, info: ValidationInfo) -> str:
        check = bool(info.context and info.context.get("check_device"))
        try:
            resolve_device(v, check_available=check)
        except BinsenseError as e:
            raise ValueError(str(e)) from None
        return v

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
