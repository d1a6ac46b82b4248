"""Building blocks shared by the model families."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from binsense.layers import BinaryConv2d, BinaryLinear
from binsense.quant import get_quantizer


class Normalize(nn.Module):
    r"""Per-channel standardisation of a [0, 1] sensor signal: :math:`(s - \mu_c)/\sigma_c`.

    Models take images in [0, 1] (the normalised sensor readout) so that sensor noise and
    input encoders act on the physical signal; this module is their first stage.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class ChannelAffine(nn.Module):
    r"""A learned per-channel affine map :math:`y_c = a_c x_c + b_c` without statistics.

    The stand-in for batch norm in the BN-free BNNs of study S1's extension: followed by
    a sign it is still a per-channel threshold (:math:`x_c \ge -b_c/a_c` for
    :math:`a_c > 0`), but nothing is normalised by batch or running statistics. ``a``
    starts at ``init_scale`` — :math:`1/\sqrt{\text{fan-in}}` after a binary layer, whose
    popcount output has a standard deviation of about :math:`\sqrt{\text{fan-in}}`, so
    that the sign's straight-through window sees unit-scale inputs — and ``b`` at 0.
    The parameters are named ``scale`` and ``shift`` (not ``weight``/``bias``), so weight
    noise treats them like BN parameters: untouched unless asked.
    """

    def __init__(self, channels: int, init_scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(init_scale)))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}"


def norm(batch_norm: bool, channels: int, fan_in: int, binary: bool, dims: int = 2) -> nn.Module:
    r"""Batch norm (1d or 2d) after a layer, or a :class:`ChannelAffine` when ``batch_norm``
    is off (initial scale :math:`1/\sqrt{\text{fan-in}}` after a binary layer, else 1)."""
    if batch_norm:
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    return ChannelAffine(channels, fan_in**-0.5 if binary else 1.0)


def activation(binary: bool, quantizer: str = "ste_sign") -> nn.Module:
    """The block activation: a sign quantizer in a BNN, ReLU in its float twin."""
    return get_quantizer(quantizer) if binary else nn.ReLU(inplace=False)


def conv(
    binary: bool, cin: int, cout: int, k: int = 3, padding: int = 1, groups: int = 1
) -> nn.Module:
    """A bias-free 3x3 convolution, binary-weight or float."""
    if binary:
        return BinaryConv2d(cin, cout, k, padding=padding, groups=groups, bias=False)
    return nn.Conv2d(cin, cout, k, padding=padding, groups=groups, bias=False)


def linear(binary: bool, cin: int, cout: int) -> nn.Module:
    """A bias-free linear layer, binary-weight or float."""
    return BinaryLinear(cin, cout, bias=False) if binary else nn.Linear(cin, cout, bias=False)


def scaled(channels: int, width: float) -> int:
    """Channel count times a width multiplier, at least 1."""
    return max(1, int(round(channels * width)))
