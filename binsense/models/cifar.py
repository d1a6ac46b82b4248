"""Float CIFAR baselines for the analog-noise study (S1): ResNet-20/32/44/56, VGG-11/16.

Each takes ``norm``: ``"batch_norm"`` (default) or ``"none"``. Study S1 compares the
same network trained with and without batch normalisation; without BN a deep network
needs help to train at all, and the choices here are binsense's (the paper's recipe is
unknown):

- **ResNet without BN** (``"none"``): convolutions get biases and the last convolution
  of every residual branch starts at zero, so each block starts as the identity (the
  core of Fixup, Zhang, Dauphin & Ma, ICLR 2019); train with a lower learning rate (e.g.
  SGD 0.02 instead of 0.1).
- **ResNet with Fixup** (``"fixup"``, the whole of Fixup's recipe): the classifier and
  the last conv of every branch start at zero; the branch's first conv is He-normal
  scaled by :math:`L^{-1/(2m-2)} = L^{-1/2}` (:math:`L` residual branches of
  :math:`m = 2` layers); a scalar bias (:class:`~binsense.layers.norm.ScalarShift`)
  before each conv, activation and the classifier, and a scalar multiplier
  (:class:`~binsense.layers.norm.ScalarScale`, from 1) at the end of each branch:
  ``relu(s * conv2(relu(conv1(x + b1) + b2) + b3) + b4 + shortcut(x))``. The convs
  have no biases (the scalars stand in for them).
- **VGG without BN**: convolutions get biases, Kaiming-normal initialisation (He et al.,
  ICCV 2015); train with a lower learning rate as well.

ResNets follow He et al., CVPR 2016, section 4.2: a 3x3 stem with 16 channels, three
stages of ``n`` residual units (16, 32, 64 channels, scaled by ``width``),
``depth = 6n+2``, option-A shortcuts (strided identity, zero-padded channels: no extra
parameters, no BN outside the branches), global average pooling and a linear classifier.
VGG follows Simonyan & Zisserman (ICLR 2015) configurations A (11) and D (16) for 32x32
inputs with one linear classifier, as is usual on CIFAR. Both are recipes of the same
block as the BNNs (:class:`~binsense.layers.BinaryBlock`), with float convs and ReLU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from binsense.data import DatasetInfo
from binsense.errors import BinsenseError
from binsense.layers.block import BinaryBlock, ResidualUnit, Shortcut
from binsense.layers.norm import ScalarScale, ScalarShift
from binsense.models.recipe import (
    Components,
    PlainRecipe,
    RecipeModel,
    Width,
    build_plain,
    he_normal,
    scaled,
)


def _check_norm(comp: Components, fixup: bool = False) -> bool:
    allowed = ("batch_norm", "none", "fixup") if fixup else ("batch_norm", "none")
    if comp.norm not in allowed:
        names = " or ".join(repr(n) for n in allowed)
        raise BinsenseError(f"this float CIFAR model takes norm {names}, got {comp.norm!r}.")
    return comp.norm == "batch_norm"


def _fixup_unit(comp: Components, cin: int, cout: int, stride: int, branches: int):
    """One Fixup residual unit (module docstring) of a net with ``branches`` branches."""
    conv1 = comp.conv(False, cin, cout, stride=stride, bias=False)
    he_normal(conv1)
    with torch.no_grad():
        conv1.weight.mul_(branches**-0.5)
    conv2 = comp.conv(False, cout, cout, stride=1, bias=False)
    nn.init.zeros_(conv2.weight)
    block1 = BinaryBlock(nn.Sequential(ScalarShift(), conv1), ScalarShift(), nn.ReLU())
    block2 = BinaryBlock(
        nn.Sequential(ScalarShift(), conv2), nn.Sequential(ScalarScale(), ScalarShift()),
        nn.Identity(),
    )  # fmt: skip
    return ResidualUnit(block1, block2, Shortcut(cin, cout, stride, "slice"), nn.ReLU())


def _float_block(comp: Components, cin: int, cout: int, stride: int, act: nn.Module):
    bn = _check_norm(comp)
    conv = comp.conv(False, cin, cout, stride=stride, bias=not bn)
    return BinaryBlock(conv, comp.norm_for(cout, 9 * cin, False), act)


def resnet_cifar(
    info: DatasetInfo, comp: Components, *, depth: int, width: Width = 1.0
) -> nn.Module:
    """CIFAR ResNet of ``depth = 6n + 2`` layers (He et al., CVPR 2016)."""
    if (depth - 2) % 6:
        raise BinsenseError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56), got {depth}.")
    n = (depth - 2) // 6
    c = [scaled(k, width) for k in (16, 32, 64)]
    encoder = comp.encoder_for(info)
    _check_norm(comp, fixup=True)
    fixup = comp.norm == "fixup"
    stem = comp.model_copy(update={"norm": "none"}) if fixup else comp  # (a biased conv)
    units: list[nn.Module] = [_float_block(stem, encoder.out_channels, c[0], 1, nn.ReLU())]
    cin = c[0]
    for stage, cout in enumerate(c):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            if fixup:
                units.append(_fixup_unit(comp, cin, cout, stride, 3 * n))
                cin = cout
                continue
            block1 = _float_block(comp, cin, cout, stride, nn.ReLU())
            block2 = _float_block(comp, cout, cout, 1, nn.Identity())
            if not _check_norm(comp):  # start as the identity (Fixup's zero-initialised end)
                nn.init.zeros_(block2.conv.weight)
                nn.init.zeros_(block2.conv.bias)
            shortcut = Shortcut(cin, cout, stride, "slice")
            units.append(ResidualUnit(block1, block2, shortcut, nn.ReLU()))
            cin = cout
    classifier = nn.Linear(cin, info.num_classes)
    pre: list[nn.Module] = []
    if fixup:  # the classifier starts at zero, after a scalar bias
        nn.init.zeros_(classifier.weight)
        nn.init.zeros_(classifier.bias)
        pre = [ScalarShift()]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), *pre, classifier)
    return RecipeModel(encoder, nn.Sequential(*units), head)


_VGG_PLANS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def vgg_cifar(info: DatasetInfo, comp: Components, *, depth: int, width: Width = 1.0) -> nn.Module:
    """VGG-11 / VGG-16 for 32x32 images, ``conv -> [BN] -> ReLU`` blocks, one classifier."""
    h, w = info.image_size
    if h % 32 or w % 32:
        raise BinsenseError(f"vgg{depth} needs image sides divisible by 32, got {h}x{w}.")
    bn = _check_norm(comp)
    plan = [v if v == "M" else scaled(int(v), width) for v in _VGG_PLANS[depth]]
    recipe = PlainRecipe(
        plan, [], (h // 32, w // 32), pool="after_block", conv_bias=not bn,
        conv_init=None if bn else he_normal,
    )  # fmt: skip
    return build_plain(info, recipe, comp)


def _depth_builder(builder: Callable[..., nn.Module], depth: int) -> Callable[..., nn.Module]:
    """A registry builder with ``depth`` fixed (keeps the option signature introspectable)."""

    def build(info: DatasetInfo, comp: Components, *, width: Width = 1.0) -> nn.Module:
        return builder(info, comp, depth=depth, width=width)

    build.__doc__ = f"{builder.__doc__.splitlines()[0]} Depth {depth}."
    return build


RESNETS = {f"resnet{d}": _depth_builder(resnet_cifar, d) for d in (20, 32, 44, 56)}
VGGS = {f"vgg{d}": _depth_builder(vgg_cifar, d) for d in (11, 16)}
