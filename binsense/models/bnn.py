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
from binsense.layers.design import DeSign
from binsense.models.common import Normalize, activation, conv, linear, norm, scaled

Plan = list[int | str]  # channel counts, "M" = 2x2 max-pool after the previous conv


def _check_first_layer(first_layer: str) -> bool:
    if first_layer not in ("float", "binary"):
        raise BinsenseError(f"first_layer must be 'float' or 'binary', got {first_layer!r}.")
    return first_layer == "binary"


def _network(
    info: DatasetInfo,
    plan: Plan,
    fcs: list[int],
    flat_side: tuple[int, int],
    *,
    binary: bool,
    first_layer: str,
    binary_classifier: bool,
    activation_quantizer: str,
    padding: int,
    batch_norm: bool = True,
    design: str | None = None,
    design_coupled: bool = False,
    bn_affine: bool = True,
) -> nn.Sequential:
    r"""``Normalize``, conv blocks from ``plan``, FC blocks of widths ``fcs``, classifier.

    Conv block: ``conv -> [max-pool] -> BN -> act``; FC block: ``linear -> BN -> act``;
    ``flat_side`` is the spatial size after the last conv block. Without ``batch_norm``
    every BN is a :class:`~binsense.models.common.ChannelAffine` (learned scale and
    shift, no statistics). ``design`` (a :class:`~binsense.layers.DeSign` kernel) replaces
    the sign after every BN that follows a *binary* conv; ``bn_affine=False`` freezes those
    BNs at :math:`\gamma = 1, \beta = 0` (the DeSign authors' default).
    """
    first_binary = binary and _check_first_layer(first_layer)
    layers: list[nn.Module] = [Normalize(info.mean, info.std)]
    cin = info.in_channels
    for i, c in enumerate(plan):
        if c == "M":
            continue
        layer_binary = first_binary if i == 0 else binary
        layers.append(conv(layer_binary, cin, c, padding=padding))
        if i + 1 < len(plan) and plan[i + 1] == "M":
            layers.append(nn.MaxPool2d(2))
        if layer_binary and (design is not None or not bn_affine):
            layers += _design_block(c, design, design_coupled, bn_affine, activation_quantizer)
        else:
            layers += [norm(batch_norm, c, 9 * cin, layer_binary)]
            layers.append(activation(binary, activation_quantizer))
        cin = c
    layers.append(nn.Flatten())
    cin *= flat_side[0] * flat_side[1]
    for f in fcs:
        layers += [linear(binary, cin, f), norm(batch_norm, f, cin, binary, dims=1)]
        layers.append(activation(binary, activation_quantizer))
        cin = f
    if binary_classifier:  # BinaryNet: binary weights then BN (float twin: same layout)
        classes = info.num_classes
        layers += [linear(binary, cin, classes), norm(batch_norm, classes, cin, binary, dims=1)]
    else:
        layers.append(nn.Linear(cin, info.num_classes))
    return nn.Sequential(*layers)


def _design_block(
    channels: int, design: str | None, coupled: bool, affine: bool, quantizer: str
) -> list[nn.Module]:
    """``BN -> DeSign`` (or ``BN -> sign`` when ``design`` is None) after a binary conv."""
    bn = nn.BatchNorm2d(channels, affine=affine)
    if design is None:
        return [bn, activation(True, quantizer)]
    return [bn, DeSign(design, quantizer, bn=bn if coupled else None)]


def vgg_small(
    info: DatasetInfo,
    *,
    binary: bool = True,
    width: float = 1.0,
    fc: int = 1024,
    first_layer: str = "float",
    binary_classifier: bool = True,
    activation_quantizer: str = "ste_sign",
    batch_norm: bool = True,
    design: str | None = None,
    design_coupled: bool = False,
    bn_affine: bool = True,
) -> nn.Sequential:
    """VGG-small / BinaryNet for 32x32 images (Courbariaux, Hubara et al. 2016).

    ``128C3-128C3-MP-256C3-256C3-MP-512C3-512C3-MP-FC1024-FC1024-FC{classes}``, channels and
    FC widths scaled by ``width`` (``width=0.25`` gives 32-64-128 channels, FC 256).
    """
    c1, c2, c3 = (scaled(c, width) for c in (128, 256, 512))
    f = scaled(fc, width)
    h, w = info.image_size
    if h % 8 or w % 8:
        raise BinsenseError(f"vgg_small needs image sides divisible by 8, got {h}x{w}.")
    plan: Plan = [c1, c1, "M", c2, c2, "M", c3, c3, "M"]
    return _network(
        info,
        plan,
        [f, f],
        (h // 8, w // 8),
        binary=binary,
        first_layer=first_layer,
        binary_classifier=binary_classifier,
        activation_quantizer=activation_quantizer,
        batch_norm=batch_norm,
        design=design,
        design_coupled=design_coupled,
        bn_affine=bn_affine,
        padding=1,
    )


def cnv(
    info: DatasetInfo,
    *,
    binary: bool = True,
    width: float = 1.0,
    first_layer: str = "float",
    binary_classifier: bool = True,
    activation_quantizer: str = "ste_sign",
    batch_norm: bool = True,
    design: str | None = None,
    design_coupled: bool = False,
    bn_affine: bool = True,
) -> nn.Sequential:
    """The FINN / Brevitas "CNV" network (Umuroglu et al., FPGA 2017).

    ``64C3-64C3-MP-128C3-128C3-MP-256C3-256C3-FC512-FC512-FC{classes}``, 3x3 convolutions
    without padding (32x32 input -> 1x1 after the last conv), widths scaled by ``width``.
    """
    c1, c2, c3, f = (scaled(c, width) for c in (64, 128, 256, 512))
    h, w = info.image_size
    oh, ow = (((s - 4) // 2 - 4) // 2 - 4 for s in (h, w))
    if min(oh, ow) < 1:
        raise BinsenseError(f"cnv needs images of at least 32x32, got {h}x{w}.")
    plan: Plan = [c1, c1, "M", c2, c2, "M", c3, c3]
    return _network(
        info,
        plan,
        [f, f],
        (oh, ow),
        binary=binary,
        first_layer=first_layer,
        binary_classifier=binary_classifier,
        activation_quantizer=activation_quantizer,
        batch_norm=batch_norm,
        design=design,
        design_coupled=design_coupled,
        bn_affine=bn_affine,
        padding=0,
    )


def mnist_bnn(
    info: DatasetInfo,
    *,
    binary: bool = True,
    width: float = 1.0,
    first_layer: str = "float",
    binary_classifier: bool = True,
    activation_quantizer: str = "ste_sign",
    batch_norm: bool = True,
    design: str | None = None,
    design_coupled: bool = False,
    bn_affine: bool = True,
) -> nn.Sequential:
    """A small convolutional BNN for 28x28 grayscale digits.

    ``32C3-MP-64C3-MP-FC128-FC{classes}`` (widths scaled by ``width``): a float first
    layer, then binary weights and activations; passes 98.9 % test accuracy after 3
    epochs on a 2-core CPU (about 30 s an epoch; see ``benchmarks/RESULTS.md``).
    """
    c1, c2, f = (scaled(c, width) for c in (32, 64, 128))
    h, w = info.image_size
    plan: Plan = [c1, "M", c2, "M"]
    return _network(
        info,
        plan,
        [f],
        (h // 4, w // 4),
        binary=binary,
        first_layer=first_layer,
        binary_classifier=binary_classifier,
        activation_quantizer=activation_quantizer,
        batch_norm=batch_norm,
        design=design,
        design_coupled=design_coupled,
        bn_affine=bn_affine,
        padding=1,
    )
