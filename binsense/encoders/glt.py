r"""The generic learned thermometer (GLT): thresholds on the ADC code learned with the BNN.

Study S3 (Nguyen & Guicquero, arXiv 2505.13462) replaces the 8-bit ADC's natural binary
code with a thermometer whose thresholds are learned, a learned global tone curve. Only
the paper's abstract is public: the parameterisation, initialisation and surrogate
gradient below are **binsense's choices**, not the paper's.

Parameterisation (monotone by construction), in ADC code units (0..255), with ``R = C``
rows (``per_channel``) or ``R = 1`` (shared):

.. math::

    t_1 = \lambda\,\theta_0, \qquad
    t_{k+1} = t_k + \lambda\,\mathrm{softplus}(\delta_k) \quad (k = 1..K-1),

i.e. :math:`t = \lambda\,(\theta_0 + [0, \mathrm{cumsum}(\mathrm{softplus}(\delta))])`,
parameters ``t0`` (:math:`\theta_0`, ``(R, 1)``) and ``delta`` (``(R, K-1)``). Since
softplus > 0 the thresholds stay strictly increasing whatever an optimizer does.
:math:`\lambda` (``code_scale``, default 16 codes) is the unit of the parameters: with
Adam every parameter moves by about ``lr`` a step, so a threshold moves by about
``lr * code_scale`` codes a step (1e-3 * 16 = 0.016 codes; with ``code_scale = 1`` a
threshold would move only a few codes in a whole CPU-preset training).

Initialisation: ``init = "uniform"`` puts :math:`t_k` at the uniform thermometer's
integer thresholds minus one half (:func:`~binsense.encoders.thermometer.uniform_thresholds`),
``"quantile"`` at the training-set quantile thresholds minus one half
(:meth:`LearnedThermometer.fit`, so ``needs_fit`` is true only then). Half-integers:
:math:`[c \ge u - \tfrac12] = [c \ge u]` for integer codes, so at initialisation the GLT
is exactly the uniform (or quantile) thermometer, with half a code of margin to float
rounding.

Forward: the exact hard compare, plane :math:`b_k = +1` if :math:`c \ge t_k`, else -1.

Backward (surrogate gradient, a straight-through estimator of the compare with respect
to the threshold): the hard plane is differentiated as the logistic plane
:math:`\tilde b_k = 2\sigma((c - t_k)/\tau) - 1`, so

.. math::

    \frac{\partial b_k}{\partial t_k} := -\frac{2}{\tau}\,\sigma(u)\,(1 - \sigma(u)),
    \qquad u = \frac{c - t_k}{\tau},

with ``temperature`` :math:`\tau` in code units (default 4: the slope's half-width at
half height is about 3.5 codes, and it integrates to the plane's full jump of 2 for any
:math:`\tau`). It is summed over the batch and the pixels (and the channels when
shared). The logistic rather than a clipped (triangle) slope because its tails never
vanish: a threshold that drifts into an empty part of the histogram still gets a
gradient back. The input code gets no gradient: it is data (an ADC has no gradient).

Deployment: :meth:`LearnedThermometer.frozen_thresholds` is :math:`\lceil t \rceil`
clamped to 0..256, and :math:`[c \ge t] = [c \ge \lceil t \rceil]` for every integer
code ``c``; in eval mode the forward pass *is* the integer compare with the frozen
thresholds, so the deployed encoder is exact integer compares (9-bit thresholds
0..256; 0 = always +1, 256 = always -1).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from binsense.data import DatasetInfo, ImageTensors
from binsense.encoders.base import ADC_MAX, adc_code
from binsense.encoders.thermometer import (
    Levels,
    PlaneEncoder,
    check_fit_channels,
    check_levels,
    fit_codes,
    planes_pm1,
    quantile_thresholds,
    uniform_thresholds,
)
from binsense.errors import BinsenseError

#: A finite number > 0.
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]

INITS = ("uniform", "quantile")


class ThresholdCompare(torch.autograd.Function):
    r"""``[codes >= t]`` as ±1 planes, with the logistic surrogate gradient in ``t``.

    ``codes``: integer-valued float ``(B, C, H, W)``; ``t``: float ``(R, K)`` with
    ``R`` = ``C`` or 1; ``temperature``: :math:`\tau` in code units. Returns float
    ``(B, C*K, H, W)``, channel-major. See the module docstring for the gradient.
    """

    @staticmethod
    def forward(ctx: Any, codes: Tensor, t: Tensor, temperature: float) -> Tensor:
        ctx.save_for_backward(codes, t)
        ctx.temperature = temperature
        rows, k = t.shape
        return planes_pm1(codes.unsqueeze(2) >= t.view(1, rows, k, 1, 1))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor | None, None]:
        codes, t = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None, None
        tau = ctx.temperature
        rows, k = t.shape
        b, c, h, w = codes.shape
        sig = torch.sigmoid((codes.unsqueeze(2) - t.view(1, rows, k, 1, 1)) / tau)
        slope = sig * (1 - sig) * (-2.0 / tau)  # d(plane)/dt
        g = (grad.reshape(b, c, k, h, w) * slope).sum(dim=(0, 3, 4))  # (C, K)
        if rows == 1:
            g = g.sum(dim=0, keepdim=True)
        return None, g.to(t.dtype), None


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BinsenseError(f"{name} must be a number > 0, got {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise BinsenseError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


class LearnedThermometer(PlaneEncoder):
    r"""GLT: ``levels`` learned thresholds on the ADC code, per channel or shared.

    Parameters ``t0`` ``(R, 1)`` and ``delta`` ``(R, K-1)`` give the thresholds
    :math:`t = \lambda(\theta_0 + [0, \mathrm{cumsum}(\mathrm{softplus}(\delta))])` in
    code units, strictly increasing by construction; forward is the hard compare
    :math:`[c \ge t_k]`, backward the logistic surrogate of width ``temperature``
    (codes); eval mode compares with the frozen integer thresholds
    :math:`\lceil t \rceil` exactly. All of it is binsense's parameterisation (module
    docstring), not the S3 paper's.

    Args:
        info: the data set (its channel count).
        levels: planes per channel ``K`` (8 = NBC-8's count; 16, 32).
        per_channel: one threshold set per colour channel, or one shared set.
        init: ``"uniform"`` (the uniform thermometer) or ``"quantile"`` (the training
            quantiles, by :meth:`fit`; ``needs_fit`` is then true).
        temperature: :math:`\tau`, the surrogate's width in codes.
        code_scale: :math:`\lambda`, codes per parameter unit (sets how fast an
            optimizer moves the thresholds).
    """

    def __init__(
        self,
        info: DatasetInfo,
        levels: Levels = 8,
        per_channel: bool = True,
        init: Literal["uniform", "quantile"] = "uniform",
        temperature: Positive = 4.0,
        code_scale: Positive = 16.0,
    ) -> None:
        super().__init__(info, check_levels(levels))
        if init not in INITS:
            raise BinsenseError(f"init must be one of {', '.join(INITS)}; got {init!r}.")
        self.per_channel = per_channel
        self.init = init
        self.temperature = _positive("temperature", temperature)
        self.code_scale = _positive("code_scale", code_scale)
        self.needs_fit = init == "quantile"
        rows = info.in_channels if per_channel else 1
        self.t0 = nn.Parameter(torch.zeros(rows, 1))
        self.delta = nn.Parameter(torch.zeros(rows, levels - 1))
        self.set_thresholds(torch.tensor([uniform_thresholds(levels)] * rows))

    @torch.no_grad()
    def set_thresholds(self, codes: Tensor) -> None:
        r"""Put the thresholds at integer ``codes - 1/2`` (``(R, K)``, strictly increasing).

        Then :math:`\lceil t \rceil` = ``codes``: the encoder equals the integer
        thermometer ``codes`` exactly.
        """
        u = codes.to(device=self.t0.device, dtype=torch.float64)
        if tuple(u.shape) != (self.t0.shape[0], self.planes):
            raise BinsenseError(
                f"thresholds must have shape {(self.t0.shape[0], self.planes)}, got "
                f"{tuple(u.shape)}."
            )
        gaps = torch.diff(u, dim=1) / self.code_scale  # > 0 for strictly increasing codes
        inverse_softplus = gaps + torch.log(-torch.expm1(-gaps))
        self.t0.copy_((u[:, :1] - 0.5) / self.code_scale)
        self.delta.copy_(inverse_softplus)

    def continuous_thresholds(self) -> Tensor:
        """The learned thresholds in code units, float ``(R, K)``, differentiable."""
        steps = torch.cumsum(F.softplus(self.delta), dim=1)
        return torch.cat([self.t0, self.t0 + steps], dim=1) * self.code_scale

    @torch.no_grad()
    def frozen_thresholds(self) -> Tensor:
        r"""Deployed integer thresholds :math:`\lceil t \rceil` in 0..256, LongTensor
        ``(R, K)`` (``R = C`` per channel, 1 shared): ``[c >= t] == [c >= ceil(t)]``."""
        t = self.continuous_thresholds()
        return torch.ceil(t).clamp_(0, ADC_MAX + 1).long()

    def thresholds_codes(self) -> Tensor:
        return self.frozen_thresholds().expand(self.in_channels, -1).clone()

    def code_bits(self, codes: Tensor) -> Tensor:
        t = self.frozen_thresholds().to(codes.dtype)
        return codes.unsqueeze(2) >= t.view(1, t.shape[0], t.shape[1], 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        codes = adc_code(x)
        if self.training:
            return ThresholdCompare.apply(codes, self.continuous_thresholds(), self.temperature)
        return planes_pm1(self.code_bits(codes))  # deployed: exact integer compares

    def fit(self, data: ImageTensors) -> None:
        """``init = "quantile"``: start at the training quantiles
        (:func:`~binsense.encoders.thermometer.quantile_thresholds`); otherwise nothing."""
        if self.init != "quantile":
            return
        check_fit_channels(data, self.in_channels)
        self.set_thresholds(quantile_thresholds(fit_codes(data, self.per_channel), self.planes))

    def extra_repr(self) -> str:
        return (
            f"levels={self.planes}, per_channel={self.per_channel}, init={self.init!r}, "
            f"temperature={self.temperature:g}, code_scale={self.code_scale:g}"
        )


__all__ = ["INITS", "LearnedThermometer", "ThresholdCompare"]
