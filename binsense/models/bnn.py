"""The BNN families: MNIST BNN, VGG-small / BinaryNet, FINN CNV — and their float twins.

Every block is ``conv -> [max-pool] -> batch-norm -> activation``: in a BNN the activation
is a sign quantizer (its output, in {-1, +1}, is the next binary layer's input), in the
float twin it is ReLU; layer shapes are identical. The activation sits after BN, so BN
followed by sign is a per-channel threshold in the deployed form. The first layer sees
real pixels: its weights are float (``first_layer="float"``, the usual choice) or binary
(``"binary"``). The classifier is a binary linear layer followed by BN (BinaryNet) or a
float linear layer (``binary_classifier=False``).
"""

from __future__ import annotations

from torch import nn

from binsense.data import DatasetInfo
from binsense.errors import BinsenseError
from binsense.models.common import Normalize, activation, conv, linear, scaled


def _check_first_layer(first_layer: str) -> bool:
    if first_layer not in ("float", "binary"):
        raise BinsenseError(f"first_layer must be 'float' or 'binary', got {first_layer!r}.")
    return first_layer == "binary"


def _classifier(
    binary: bool, binary_classifier: bool, cin: int, classes: int
) -> list[nn.Module]:
    if binary_classifier:  # BinaryNet: binary weights then BN (float twin: same layout)
        return [linear(binary, cin, classes), nn.BatchNorm1d(classes)]
    return [nn.Linear(cin, classes)]


def vgg_small(
    info: DatasetInfo,
    *,
    binary: bool = True,
    width: float = 1.0,
    fc: int = 1024,
    first_layer: str = "float",
    binary_classifier: bool = True,
    activation_quantizer: str = "ste_sign",
) -> nn.Sequential:
    """VGG-small / BinaryNet for 32x32 images (Courbariaux, Hubara et al. 2016).

    ``128C3-128C3-MP-256C3-256C3-MP-512C3-512C3-MP-FC1024-FC1024-FC{classes}``, channels and
    FC widths scaled by ``width`` (``width=0.25`` gives 32-64-128 channels, FC 256).
    """
    first_binary = binary and _check_first_layer(first_layer)
    c1, c2, c3 = (scaled(c, width) for c in (128, 256, 512))
    f = scaled(fc, width)
    h, w = info.image_size
    if h % 8 or w % 8:
        raise BinsenseError(f"vgg_small needs image sides divisible by 8, got {h}x{w}.")

    def act() -> nn.Module:
        return activation(binary, activation_quantizer)

    layers: list[nn.Module] = [
        Normalize(info.mean, info.std),
        conv(first_binary, info.in_channels, c1), nn.BatchNorm2d(c1), act(),
        conv(binary, c1, c1), nn.MaxPool2d(2), nn.BatchNorm2d(c1), act(),
        conv(binary, c1, c2), nn.BatchNorm2d(c2), act(),
        conv(binary, c2, c2), nn.MaxPool2d(2), nn.BatchNorm2d(c2), act(),
        conv(binary, c2, c3), nn.BatchNorm2d(c3), act(),
        conv(binary, c3, c3), nn.MaxPool2d(2), nn.BatchNorm2d(c3), act(),
        nn.Flatten(),
        linear(binary, c3 * (h // 8) * (w // 8), f), nn.BatchNorm1d(f), act(),
        linear(binary, f, f), nn.BatchNorm1d(f), act(),
        *_classifier(binary, binary_classifier, f, info.num_classes),
    ]  # fmt: skip
    return nn.Sequential(*layers)


def cnv(
    info: DatasetInfo,
    *,
    binary: bool = True,
    width: float = 1.0,
    first_layer: str = "float",
    binary_classifier: bool = True,
    activation_quantizer: str = "ste_sign",
) -> nn.Sequential:
    """The FINN / Brevitas "CNV" network (Umuroglu et al., FPGA 2017).

    ``64C3-64C3-MP-128C3-128C3-MP-256C3-256C3-FC512-FC512-FC{classes}``, 3x3 convolutions
    without padding (32x32 input -> 1x1 after the last conv), widths scaled by ``width``.
    """
    first_binary = binary and _check_first_layer(first_layer)
    c1, c2, c3, f = (scaled(c, width) for c in (64, 128, 256, 512))
    h, w = info.image_size
    oh, ow = (((s - 4) // 2 - 4) // 2 - 4 for s in (h, w))
    if min(oh, ow) < 1:
        raise BinsenseError(f"cnv needs images of at least 32x32, got {h}x{w}.")

    def act() -> nn.Module:
        return activation(binary, activation_quantizer)

    layers: list[nn.Module] = [
        Normalize(info.mean, info.std),
        conv(first_binary, info.in_channels, c1, padding=0), nn.BatchNorm2d(c1), act(),
        conv(binary, c1, c1, padding=0), nn.MaxPool2d(2), nn.BatchNorm2d(c1), act(),
        conv(binary, c1, c2, padding=0), nn.BatchNorm2d(c2), act(),
        conv(binary, c2, c2, padding=0), nn.MaxPool2d(2), nn.BatchNorm2d(c2), act(),
        conv(binary, c2, c3, padding=0), nn.BatchNorm2d(c3), act(),
        conv(binary, c3, c3, padding=0), nn.BatchNorm2d(c3), act(),
        nn.Flatten(),
        linear(binary, c3 * oh * ow, f), nn.BatchNorm1d(f), act(),
        linear(binary, f, f), nn.BatchNorm1d(f), act(),
        *_classifier(binary, binary_classifier, f, info.num_classes),
    ]  # fmt: skip
    return nn.Sequential(*layers)


def mnist_bnn(
    info: DatasetInfo,
    *,
    binary: bool = True,
    width: float = 1.0,
    first_layer: str = "float",
    binary_classifier: bool = True,
    activation_quantizer: str = "ste_sign",
) -> nn.Sequential:
    """A small convolutional BNN for 28x28 grayscale digits.

    ``32C3-MP-64C3-MP-FC128-FC{classes}`` (widths scaled by ``width``): a float first
    layer, then binary weights and activations; passes 98.9 % test accuracy after 3
    epochs on a 2-core CPU (about 30 s an epoch; see ``benchmarks/RESULTS.md``).
    """
    first_binary = binary and _check_first_layer(first_layer)
    c1, c2, f = (scaled(c, width) for c in (32, 64, 128))
    h, w = info.image_size

    def act() -> nn.Module:
        return activation(binary, activation_quantizer)

    layers: list[nn.Module] = [
        Normalize(info.mean, info.std),
        conv(first_binary, info.in_channels, c1), nn.MaxPool2d(2), nn.BatchNorm2d(c1), act(),
        conv(binary, c1, c2), nn.MaxPool2d(2), nn.BatchNorm2d(c2), act(),
        nn.Flatten(),
        linear(binary, c2 * (h // 4) * (w // 4), f), nn.BatchNorm1d(f), act(),
        *_classifier(binary, binary_classifier, f, info.num_classes),
    ]  # fmt: skip
    return nn.Sequential(*layers)
