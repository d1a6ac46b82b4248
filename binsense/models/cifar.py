"""Float CIFAR baselines for the analog-noise study (S1): ResNet-20/32/44/56, VGG-11/16.

Each takes ``batch_norm`` (default ``True``). Study S1 compares the same network trained
with and without batch normalisation; without BN a deep network needs help to train at
all, and the choices here are binsense's (the paper's recipe is unknown):

- **ResNet without BN**: convolutions get biases and the last convolution of every
  residual branch starts at zero, so each block starts as the identity (the core of
  Fixup, Zhang, Dauphin & Ma, ICLR 2019); train with a lower learning rate (e.g. SGD 0.02
  instead of 0.1).
- **VGG without BN**: convolutions get biases, Kaiming-normal initialisation (He et al.,
  ICCV 2015); train with a lower learning rate as well.

ResNets follow He et al., CVPR 2016, section 4.2: a 3x3 stem with 16 channels, three
stages of ``n`` basic blocks (16, 32, 64 channels, scaled by ``width``), ``depth = 6n+2``,
option-A shortcuts (strided identity, zero-padded channels: no extra parameters, no BN
outside the branches), global average pooling and a linear classifier. VGG follows
Simonyan & Zisserman (ICLR 2015) configurations A (11) and D (16) for 32x32 inputs with
one linear classifier, as is usual on CIFAR.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from binsense.data import DatasetInfo
from binsense.errors import BinsenseError
from binsense.models.common import Normalize, scaled


def _norm(batch_norm: bool, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class BasicBlock(nn.Module):
    """``relu(x' + BN(conv(relu(BN(conv(x))))))`` with an option-A shortcut ``x'``."""

    def __init__(self, cin: int, cout: int, stride: int, batch_norm: bool) -> None:
        super().__init__()
        bias = not batch_norm
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn1 = _norm(batch_norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.bn2 = _norm(batch_norm, cout)
        self.stride, self.pad = stride, cout - cin
        if not batch_norm:  # start as the identity (Fixup's zero-initialised branch end)
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad))
        return x

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.shortcut(x) + self.bn2(self.conv2(y)))


def resnet_cifar(
    info: DatasetInfo, *, depth: int, width: float = 1.0, batch_norm: bool = True
) -> nn.Sequential:
    """CIFAR ResNet of ``depth = 6n + 2`` layers (He et al., CVPR 2016)."""
    if (depth - 2) % 6:
        raise BinsenseError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56), got {depth}.")
    n = (depth - 2) // 6
    c = [scaled(k, width) for k in (16, 32, 64)]
    layers: list[nn.Module] = [
        Normalize(info.mean, info.std),
        nn.Conv2d(info.in_channels, c[0], 3, 1, 1, bias=not batch_norm),
        _norm(batch_norm, c[0]),
        nn.ReLU(),
    ]
    cin = c[0]
    for stage, cout in enumerate(c):
        for i in range(n):
            layers.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1, batch_norm))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, info.num_classes)]
    return nn.Sequential(*layers)


_VGG_PLANS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def vgg_cifar(
    info: DatasetInfo, *, depth: int, width: float = 1.0, batch_norm: bool = True
) -> nn.Sequential:
    """VGG-11 / VGG-16 for 32x32 images, ``conv -> [BN] -> ReLU`` blocks, one classifier."""
    h, w = info.image_size
    if h % 32 or w % 32:
        raise BinsenseError(f"vgg{depth} needs image sides divisible by 32, got {h}x{w}.")
    layers: list[nn.Module] = [Normalize(info.mean, info.std)]
    cin = info.in_channels
    for v in _VGG_PLANS[depth]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        cout = scaled(int(v), width)
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)
        if not batch_norm:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        layers += [conv, _norm(batch_norm, cout), nn.ReLU()]
        cin = cout
    layers += [nn.Flatten(), nn.Linear(cin * (h // 32) * (w // 32), info.num_classes)]
    return nn.Sequential(*layers)


def _depth_builder(builder, depth: int):
    """A registry builder with ``depth`` fixed (keeps the option signature introspectable)."""

    def build(info: DatasetInfo, *, width: float = 1.0, batch_norm: bool = True) -> nn.Sequential:
        return builder(info, depth=depth, width=width, batch_norm=batch_norm)

    build.__doc__ = f"{builder.__doc__.splitlines()[0]} Depth {depth}."
    return build


RESNETS = {f"resnet{d}": _depth_builder(resnet_cifar, d) for d in (20, 32, 44, 56)}
VGGS = {f"vgg{d}": _depth_builder(vgg_cifar, d) for d in (11, 16)}
