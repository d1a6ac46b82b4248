"""Evaluation conditions for sensor noise, analog weight noise and quantized batch norm.

Importing this module registers three condition kinds (:mod:`binsense.evaluate.conditions`):

- ``sensor_noise``: the test images pass through sensor instance *d* (seed
  ``seed + d``) of a :class:`binsense.noise.SensorNoise` — the same sensor for every
  model of a study, so models are compared on identical sensors;
- ``weight_noise``: Monte-Carlo trial *d* of :class:`binsense.noise.WeightNoise` (draw
  ``seed + d``), weights restored bit-exactly afterwards;
- ``bn_bits``: batch norm quantized to ``bits`` (:func:`binsense.layers.bn.bn_quantized`),
  restored afterwards; deterministic (one draw). ``scale = "channel"`` gives every channel
  its own fixed-point scale (default ``"tensor"``, one per layer, as in the S0 results).

Field values are validated when the condition is built; a misspelt name gets an error
that suggests the closest valid one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, ClassVar

import torch
from pydantic import AfterValidator, Field, field_validator, model_validator
from torch import Tensor, nn

from binsense.evaluate.conditions import Condition, InputTransform, register_condition
from binsense.layers.bn import BN_SCALES, BN_TARGETS, bn_quantized
from binsense.noise.sensor import SensorNoise, get_noise_type
from binsense.noise.weights import BN_FORMS, NOISE_MODES, REFERENCES, WeightNoise, check_choice
from binsense.quant.fixed import FLOAT_BITS, check_bits


def _bn_target(value: str) -> str:
    return check_choice("batch-norm quantization target", value, BN_TARGETS)


def _bn_scale(value: str) -> str:
    return check_choice("batch-norm quantization scale", value, BN_SCALES)


BitWidth = Annotated[int, AfterValidator(check_bits)]
BnTarget = Annotated[str, AfterValidator(_bn_target)]
BnScale = Annotated[str, AfterValidator(_bn_scale)]


def _drop_default(params: dict[str, Any], key: str, default: Any) -> dict[str, Any]:
    """``params`` without ``key`` when it has its default: a field added after studies were
    run stays out of the condition id (a hash of the params), so stored results still match.
    """
    if params.get(key) == default:
        del params[key]
    return params


@register_condition
class SensorNoiseCondition(Condition):
    """Fixed-pattern sensor noise on the input images, averaged over sensor instances.

    ``temporal`` adds fresh per-frame noise, drawn from a generator seeded by the draw, so
    results are reproducible too. ``bn_bits`` < 32 evaluates with batch norm quantized
    at the same time (``bn_target`` and ``bn_scale`` as ``target`` and ``scale`` in
    ``bn_bits`` conditions): study S0's grid of BN bit-width x noise type x level.
    """

    kind: ClassVar[str] = "sensor_noise"

    type: str
    level: float = Field(ge=0, le=1, description="sigma, a fraction of full scale (<= 1)")
    draws: int = Field(5, ge=1, description="sensor instances, one per draw")
    per_channel: bool = False
    adc_bits: int | None = Field(8, ge=1, le=16)
    temporal: float = Field(0.0, ge=0, le=1)
    seed: int = 0
    bn_bits: BitWidth = FLOAT_BITS
    bn_target: BnTarget = "raw"
    bn_scale: BnScale = "tensor"

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        return get_noise_type(value).name

    def params(self) -> dict[str, Any]:
        return _drop_default(super().params(), "bn_scale", "tensor")

    def noise(self) -> SensorNoise:
        """The :class:`SensorNoise` this condition applies."""
        return SensorNoise(
            self.type, self.level, self.per_channel, self.temporal, self.adc_bits, clip=True
        )

    def draw_count(self) -> int:
        return self.draws

    @contextmanager
    def applied(self, model: nn.Module, draw: int) -> Iterator[InputTransform | None]:
        noise = self.noise()
        sensor = self.seed + draw
        generators: dict[torch.device, torch.Generator] = {}

        def transform(x: Tensor) -> Tensor:
            gen = None
            if noise.temporal > 0:
                if x.device not in generators:
                    generators[x.device] = torch.Generator(x.device).manual_seed(sensor)
                gen = generators[x.device]
            return noise.apply(x, sensor, gen)

        with bn_quantized(model, self.bn_bits, self.bn_target, self.bn_scale):
            yield transform


@register_condition
class WeightNoiseCondition(Condition):
    """Analog Gaussian noise on the weights, ``draws`` Monte-Carlo draws.

    Give ``eta`` or ``snr_db`` (see :class:`binsense.noise.WeightNoise`).
    """

    kind: ClassVar[str] = "weight_noise"

    eta: float | None = Field(None, ge=0)
    snr_db: float | None = None
    mode: str = "additive"
    reference: str = "max"
    include_bn: bool = False
    bn_form: str = "params"
    include_bias: bool = False
    binarized: bool = False
    draws: int = Field(10, ge=1)
    seed: int = 0

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        return check_choice("weight noise mode", value, NOISE_MODES)

    @field_validator("reference")
    @classmethod
    def _known_reference(cls, value: str) -> str:
        return check_choice("weight noise reference", value, REFERENCES)

    @field_validator("bn_form")
    @classmethod
    def _known_bn_form(cls, value: str) -> str:
        return check_choice("batch-norm noise form", value, BN_FORMS)

    @model_validator(mode="after")
    def _one_level(self) -> WeightNoiseCondition:
        if (self.eta is None) == (self.snr_db is None):
            raise ValueError("weight_noise needs exactly one of eta and snr_db")
        return self

    def noise(self) -> WeightNoise:
        """The :class:`WeightNoise` this condition applies."""
        return WeightNoise(
            self.eta,
            self.snr_db,
            self.mode,
            self.reference,
            self.include_bn,
            self.binarized,
            bn_form=self.bn_form,
            include_bias=self.include_bias,
        )

    def draw_count(self) -> int:
        return self.draws

    @contextmanager
    def applied(self, model: nn.Module, draw: int) -> Iterator[InputTransform | None]:
        with self.noise().applied(model, self.seed + draw):
            yield None


@register_condition
class BnBitsCondition(Condition):
    """Batch norm quantized to ``bits``-bit fixed point (``target`` raw/affine/threshold).

    ``scale``: ``"tensor"`` (default, one fixed-point scale per quantized tensor, as in the
    S0 results) or ``"channel"`` (one per channel: robust to a nearly dead channel); see
    :func:`binsense.layers.bn.quantize_bn`.
    """

    kind: ClassVar[str] = "bn_bits"

    bits: BitWidth
    target: BnTarget = "raw"
    scale: BnScale = "tensor"

    def params(self) -> dict[str, Any]:
        return _drop_default(super().params(), "scale", "tensor")

    @contextmanager
    def applied(self, model: nn.Module, draw: int) -> Iterator[InputTransform | None]:
        with bn_quantized(model, self.bits, self.target, self.scale):
            yield None


__all__ = ["BnBitsCondition", "SensorNoiseCondition", "WeightNoiseCondition"]
