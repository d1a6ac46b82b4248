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
