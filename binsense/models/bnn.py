"""The BNN families: MNIST BNN, VGG-small / BinaryNet, FINN CNV — and their float twins.

Each builder only describes its network (:class:`~binsense.models.recipe.PlainRecipe`:
widths, pools, padding); :func:`~binsense.models.recipe.build_plain` assembles it from the
chosen components. Every block is ``conv -> [max-pool] -> norm -> act``: in a BNN the
activation is a sign quantizer (or DeSign), in the float twin ReLU; layer shapes are
identical. The first layer sees real pixels: float weights by default
(``first_layer = "binary"`` for binary ones). The classifier is a binary linear layer
followed by a norm (BinaryNet, ``head = "binary"``) or a float linear layer.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import nn

from binsense.data import DatasetInfo
from binsense.errors import BinsenseError
from binsense.models.recipe import Components, PlainRecipe, Width, build_plain, he_normal, scaled

PositiveInt = Annotated[int, Field(ge=1)]


def vgg_small(
    info: DatasetInfo, comp: Components, *, width: Width = 1.0, fc: int = 1024
) -> nn.Module:
    """VGG-small / BinaryNet for 32x32 images (Courbariaux, Hubara et al. 2016).

    ``128C3-128C3-MP-256C3-256C3-MP-512C3-512C3-MP-FC1024-FC1024-FC{classes}``, channels and
    FC widths scaled by ``width`` (``width=0.25`` gives 32-64-128 channels, FC 256).
    """
    c1, c2, c3 = (scaled(c, width) for c in (128, 256, 512))
    f = scaled(fc, width)
    h, w = info.image_size
    if h % 8 or w % 8:
        raise BinsenseError(f"vgg_small needs image sides divisible by 8, got {h}x{w}.")
    plan = [c1, c1, "M", c2, c2, "M", c3, c3, "M"]
    return build_plain(info, PlainRecipe(plan, [f, f], (h // 8, w // 8), padding=1), comp)


def cnv(info: DatasetInfo, comp: Components, *, width: Width = 1.0) -> nn.Module:
    """The FINN / Brevitas "CNV" network (Umuroglu et al., FPGA 2017).

    ``64C3-64C3-MP-128C3-128C3-MP-256C3-256C3-FC512-FC512-FC{classes}``, 3x3 convolutions
    without padding (32x32 input -> 1x1 after the last conv), widths scaled by ``width``.
    """
    c1, c2, c3, f = (scaled(c, width) for c in (64, 128, 256, 512))
    h, w = info.image_size
    oh, ow = (((s - 4) // 2 - 4) // 2 - 4 for s in (h, w))
    if min(oh, ow) < 1:
        raise BinsenseError(f"cnv needs images of at least 32x32, got {h}x{w}.")
    plan = [c1, c1, "M", c2, c2, "M", c3, c3]
    return build_plain(info, PlainRecipe(plan, [f, f], (oh, ow), padding=0), comp)


def mnist_bnn(
    info: DatasetInfo, comp: Components, *, width: Width = 1.0, blocks: PositiveInt = 1
) -> nn.Module:
    r"""A small convolutional BNN for 28x28 grayscale digits.

    ``32C3-MP-64C3-MP-FC128-FC{classes}`` (widths scaled by ``width``): a float first
    layer, then binary weights and activations; passes 98.9 % test accuracy after 3
    epochs on a 2-core CPU (about 30 s an epoch; see ``benchmarks/RESULTS.md``).

    ``blocks`` conv blocks per stage (``blocks = 1``: the network above) make the same
    recipe deeper without changing anything else: ``(32C3)xn-MP-(64C3)xn-MP-FC128-FC``
    with ``n = blocks``, the same widths, pools and head. The network has ``2n + 1``
    hidden blocks, each ``conv -> norm -> act``, and with the default binary head one
    norm more, so ``2n + 2`` norm layers (batch norms by default): 4, 6, 8, 12, 16 for
    ``n`` = 1, 2, 3, 5, 7 (the depth sweep of ``studies/x_bn_depth.toml``).

    The float twin without batch norm (``norm = "channel_affine"`` or ``"none"``)
    initialises its convs He-normal, :math:`w \sim \mathcal N(0, 2/\text{fan-in})` (He et
    al., ICCV 2015, as :func:`~binsense.models.cifar.vgg_cifar` without BN), so that ReLU
    activations keep their scale at any depth; with PyTorch's default
    (:math:`\text{Var}\,w = 1/(3\,\text{fan-in})`) each conv shrinks the activation
    variance about 6x, and at ``blocks = 7`` the BN-free net stayed at chance for 144
    Adam steps on 3,000 MNIST images (measured).
    """
    c1, c2, f = (scaled(c, width) for c in (32, 64, 128))
    h, w = info.image_size
    plan = [*[c1] * blocks, "M", *[c2] * blocks, "M"]
    he_init = not comp.binary and comp.norm != "batch_norm"
    recipe = PlainRecipe(
        plan, [f], (h // 4, w // 4), padding=1, conv_init=he_normal if he_init else None
    )
    return build_plain(info, recipe, comp)
