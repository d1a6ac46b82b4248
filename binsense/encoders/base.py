r"""The encoder base class, the float encoder, and the 8-bit ADC every binary encoder reads.

See the package docstring (:mod:`binsense.encoders`) for the list of encoders.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from binsense.data import DatasetInfo, ImageTensors

#: Largest code of the 8-bit ADC in front of the binary encoders.
ADC_MAX = 255


def adc_code(x: Tensor) -> Tensor:
    r"""The 8-bit ADC: :math:`c = \mathrm{clamp}(\mathrm{round}(255\,s), 0, 255)`, float32.

    ``x`` is the sensor signal in [0, 1] after sensor noise (so it may leave [0, 1]; the
    ADC clips). ``round`` is :func:`torch.round` (half to even). For a clean pixel
    ``s = p / 255`` it gives back ``p`` exactly. The result is a float tensor holding
    integers 0..255, with no gradient (an ADC has none).
    """
    return torch.round(x.detach().to(torch.float32) * ADC_MAX).clamp_(0, ADC_MAX)


class InputEncoder(nn.Module):
    """Base class: maps ``(B, C, H, W)`` images in [0, 1] to the first layer's input.

    An encoder whose parameters depend on the training data (thresholds at data
    quantiles) sets ``needs_fit`` and implements :meth:`fit`; the trainer calls it once,
    on the training split, after building the model and before the first step. What it
    fits must live in buffers or parameters, so checkpoints carry it. ``needs_fit`` is a
    class default that an instance may override (the learned thermometer needs a fit
    only when it is initialised at quantiles).
    """

    #: Whether the output is ±1 planes (a binary first layer can read them).
    binary: ClassVar[bool] = False
    #: Whether :meth:`fit` must run on the training data before training (class default;
    #: an instance may set its own).
    needs_fit: bool = False
    #: Channels of the output.
    out_channels: int

    def fit(self, data: ImageTensors) -> None:
        """Fit data-dependent parameters on the training split (uint8 images)."""


class FloatEncoder(InputEncoder):
    r"""Per-channel standardisation of a [0, 1] sensor signal: :math:`(s - \mu_c)/\sigma_c`.

    ``mean`` and ``std`` default to the data set's (:class:`~binsense.data.DatasetInfo`).
    Kept as buffers named ``mean`` and ``std``.
    """

    binary: ClassVar[bool] = False

    def __init__(
        self,
        info: DatasetInfo,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__()
        mean = list(info.mean) if mean is None else mean
        std = list(info.std) if std is None else std
        self.out_channels = info.in_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


__all__ = ["ADC_MAX", "FloatEncoder", "InputEncoder", "adc_code"]
