"""A ResNet-18-style BNN for 32x32 images, with optional DeSign (study S2).

The layout follows the ReCU CIFAR ResNet-18 (Xu et al., ICCV 2021) on which the DeSign
authors built (Monroy et al., IEEE JSTSP 2024; their code ``bemc22/DeSign``):

- stem: a *float* 3x3 convolution (64 channels) and BN, no activation;
- four stages of two residual units, 64-128-256-512 channels (times ``width``), strides
  1-2-2-2; each unit (:class:`~binsense.layers.ResidualUnit`) computes

  .. math:: h = a_1\\big(\\mathrm{BN}_1(W_1 \\ast q(x))\\big),
            \\qquad
            y = \\operatorname{hardtanh}\\big(a_2(\\mathrm{BN}_2(W_2 \\ast h)) + s(x)\\big)

  with binary weights :math:`W`, :math:`q` the sign quantizer (the unit's ``binarize``,
  on the real residual stream), :math:`a_1` the sign or DeSign that binarises
  :math:`h` (block 1's ``act``), :math:`a_2` the identity or the DeSign *shift*
  :math:`u - gT` (block 2's ``act``, before the add, where the authors put it) and
  :math:`s` the shortcut: identity, or a 2x2 average pool with zero-padded channels
  where the shape changes (no parameters). The authors write
  :math:`q(\\operatorname{hardtanh}(a_1(\\cdot)))` for :math:`h`; hardtanh keeps the sign,
  and the triangle surrogate (zero outside :math:`|u| < 1`) is unchanged by it, so
  binarising at :math:`a_1` is the same function with the same gradient;
- head: global average pooling, BN, float linear classifier.

``bn_affine=False`` freezes the block BNs at :math:`\\gamma = 1, \\beta = 0` (the DeSign
authors' default).
"""

from __future__ import annotations

from torch import nn

from binsense.data import DatasetInfo
from binsense.layers.block import BinaryBlock, ResidualUnit, Shortcut
from binsense.layers.design import DeSign
from binsense.models.recipe import Components, RecipeModel, Width, scaled


def _unit(comp: Components, cin: int, cout: int, stride: int) -> ResidualUnit:
    def bn() -> nn.Module:
        return nn.BatchNorm2d(cout, affine=comp.bn_affine)

    conv1 = comp.conv(True, cin, cout, stride=stride, groups=comp.groups)
    bn1 = bn()
    coupled = comp.design_coupled
    act1 = comp.sign() if comp.design is None else DeSign(
        comp.design, comp.sign(), bn=bn1 if coupled else None
    )  # fmt: skip
    conv2 = comp.conv(True, cout, cout, groups=comp.groups)
    bn2 = bn()
    act2 = nn.Identity() if comp.design is None else DeSign(
        comp.design, None, bn=bn2 if coupled else None
    )  # fmt: skip
    return ResidualUnit(
        BinaryBlock(conv1, bn1, act1),
        BinaryBlock(conv2, bn2, act2),
        Shortcut(cin, cout, stride, "avg_pool"),
        nn.Hardtanh(),
        binarize=comp.sign(),
    )


def _resnet_bnn(
    info: DatasetInfo, comp: Components, channels: tuple[int, ...], units: int, width: float
) -> nn.Module:
    """Float stem, stages of ``units`` binary residual units (stride 2 from the second
    stage), global pooling, BN and a float classifier."""
    c = [scaled(k, width) for k in channels]
    encoder = comp.encoder_for(info)
    stem = BinaryBlock(
        comp.conv(False, encoder.out_channels, c[0]), nn.BatchNorm2d(c[0]), nn.Identity()
    )
    blocks: list[nn.Module] = [stem]
    cin = c[0]
    for stage, cout in enumerate(c):
        for i in range(units):
            blocks.append(_unit(comp, cin, cout, 2 if stage > 0 and i == 0 else 1))
            cin = cout
    head = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(cin), nn.Linear(cin, info.num_classes)
    )
    return RecipeModel(encoder, nn.Sequential(*blocks), head)


def resnet18_bnn(info: DatasetInfo, comp: Components, *, width: Width = 1.0) -> nn.Module:
    """ResNet-18-style BNN (ReCU / DeSign CIFAR layout), 64-128-256-512 x ``width``.

    ``design``: a DeSign kernel (e.g. ``"2x2"`` or ``"2x2x4_shift"``) after every block
    BN; ``None`` is the sign baseline.
    """
    return _resnet_bnn(info, comp, (64, 128, 256, 512), 2, width)


def resnet20_bnn(info: DatasetInfo, comp: Components, *, width: Width = 1.0) -> nn.Module:
    """ResNet-20 1W1A for CIFAR: the same units in He et al.'s CIFAR ResNet-20 shape —
    a float 16-channel stem, three stages of three units (16-32-64 channels x
    ``width``), global pooling, BN and a float classifier; real-valued shortcuts (the
    hardtanh residual stream, parameter-free average-pool shortcuts). 18 binary convs:
    267,264 binary weights (0.25 Mbit), the size of IR-Net's / ReCU's ResNet-20
    (86.5 / 87.5 %), whose units put a shortcut around every conv (Bi-Real style)
    rather than around two.
    """
    return _resnet_bnn(info, comp, (16, 32, 64), 3, width)
