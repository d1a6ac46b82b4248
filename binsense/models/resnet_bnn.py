"""A ResNet-18-style BNN for 32x32 images, with optional DeSign (study S2).

The layout follows the ReCU CIFAR ResNet-18 (Xu et al., ICCV 2021) on which the DeSign
authors built (Monroy et al., IEEE JSTSP 2024; their code ``bemc22/DeSign``):

- stem: a *float* 3x3 convolution (64 channels) and BN, no activation;
- four stages of two basic blocks, 64-128-256-512 channels (times ``width``), strides
  1-2-2-2; in each block

  .. math:: h = \\operatorname{hardtanh}\\big(a_1(\\mathrm{BN}_1(W_1 \\ast q(x)))\\big),
            \\qquad
            y = \\operatorname{hardtanh}\\big(a_2(\\mathrm{BN}_2(W_2 \\ast q(h))) + s(x)\\big)

  with binary weights :math:`W`, the sign quantizer :math:`q` on every binary
  convolution's input, :math:`a` the identity (sign baseline) or the DeSign shift
  :math:`a(u) = u - g\\,T` (:class:`~binsense.layers.DeSign` with ``quantizer=None``) —
  *after every BN that follows a binary convolution, inside the block before the
  shortcut add*, never after the float stem or the classifier — and :math:`s` the
  shortcut: identity, or a 2x2 average pool with zero-padded channels where the shape
  changes (no parameters). The binarisation itself is the next convolution's :math:`q`,
  so a block computes :math:`\\operatorname{sign}(\\mathrm{BN}_1 - gT)` for its second
  convolution — DeSign, foldable into per-position thresholds — and
  :math:`\\operatorname{sign}(\\mathrm{BN}_2 - gT + s(x))` across the residual add;
- head: global average pooling, BN, float linear classifier.

``bn_affine=False`` freezes the block BNs at :math:`\\gamma = 1, \\beta = 0` (the DeSign
authors' default).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from binsense.data import DatasetInfo
from binsense.layers import BinaryConv2d
from binsense.layers.design import DeSign
from binsense.models.common import Normalize, scaled


class BinaryBasicBlock(nn.Module):
    """Two binary 3x3 convolutions with BN, optional DeSign, a parameter-free shortcut."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        *,
        design: str | None,
        design_coupled: bool,
        bn_affine: bool,
        quantizer: str,
    ) -> None:
        super().__init__()
        self.conv1 = BinaryConv2d(cin, cout, 3, stride, 1, input_quantizer=quantizer)
        self.bn1 = nn.BatchNorm2d(cout, affine=bn_affine)
        self.conv2 = BinaryConv2d(cout, cout, 3, 1, 1, input_quantizer=quantizer)
        self.bn2 = nn.BatchNorm2d(cout, affine=bn_affine)
        self.act1: nn.Module = nn.Identity()
        self.act2: nn.Module = nn.Identity()
        if design is not None:
            self.act1 = DeSign(design, None, bn=self.bn1 if design_coupled else None)
            self.act2 = DeSign(design, None, bn=self.bn2 if design_coupled else None)
        self.stride, self.pad = stride, cout - cin

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        if self.pad > 0:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: Tensor) -> Tensor:
        h = F.hardtanh(self.act1(self.bn1(self.conv1(x))))
        return F.hardtanh(self.act2(self.bn2(self.conv2(h))) + self.shortcut(x))


def resnet18_bnn(
    info: DatasetInfo,
    *,
    width: float = 1.0,
    design: str | None = None,
    design_coupled: bool = False,
    bn_affine: bool = True,
    activation_quantizer: str = "approx_sign",
) -> nn.Sequential:
    """ResNet-18-style BNN (ReCU / DeSign CIFAR layout), 64-128-256-512 x ``width``.

    ``design``: a DeSign kernel (preset name, e.g. ``"2x2"`` or ``"2x2x4_shift"``) after
    every block BN; ``None`` is the sign baseline.
    """
    c = [scaled(k, width) for k in (64, 128, 256, 512)]
    layers: list[nn.Module] = [
        Normalize(info.mean, info.std),
        nn.Conv2d(info.in_channels, c[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(c[0]),
    ]
    cin = c[0]
    for stage, cout in enumerate(c):
        for i in range(2):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(BinaryBasicBlock(
                cin, cout, stride, design=design, design_coupled=design_coupled,
                bn_affine=bn_affine, quantizer=activation_quantizer,
            ))  # fmt: skip
            cin = cout
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.BatchNorm1d(cin),
        nn.Linear(cin, info.num_classes),
    ]
    return nn.Sequential(*layers)
