r"""A compact grouped BNN for small sensors (study S3): ``compact_bnn``.

Study S3 (Nguyen & Guicquero, arXiv 2505.13462) reports "a compact topology of
lightweight grouped convolutions"; only its abstract is public, so **the topology below
is binsense's choice**, not the paper's:

- **stem**: one dense 3x3 conv (``base x width`` channels, stride ``stem_stride``), norm,
  sign. Its weights are float by default and binary when ``first_layer = "binary"`` or
  the encoder is binary (±1 planes: ``nbc``, ``uniform``, ``quantile``, ``glt``), the rule
  of :func:`~binsense.models.recipe.build_plain`, so a binary encoder gives a *fully*
  binary network;
- **stages**: ``stages`` stages of ``depth`` :class:`~binsense.layers.BinaryBlock` s
  (grouped binary 3x3 conv -> [pool] -> norm -> sign), ``base x 2^s x width`` channels in
  stage ``s``, ``groups`` groups in every conv (the ``groups`` option, default 4);
- **channel shuffle** (``shuffle = true``, the default; ShuffleNet, Zhang et al. CVPR
  2018): a :class:`~binsense.layers.ChannelShuffle` module *between* two grouped
  blocks, after the first block's sign, so each block keeps its explicit
  ``(norm, act)`` pair for the deploy step, and every group of a grouped conv sees
  channels of every group of the one before (without it, the groups stay separate paths
  until the head);
- **downsampling** at the first block of every stage after the first:
  ``downsample = "max_pool"`` (default) puts a 2x2 max-pool between the conv and its norm
  (conv -> pool -> norm -> sign, as in BinaryNet: the max of integer popcounts, before
  the threshold); ``"stride"`` makes that conv stride 2 (4x fewer MACs in that layer);
- **head**, resolution-agnostic, no parameter depending on the image size, so the same
  recipe runs at 32x32 (CIFAR), 64x64 and 96x96 (STL-10, VWW); ``stem_stride = 2``
  halves the sides early (a quarter of the MACs) at 96x96. It pools the last block's ±1
  maps globally; the pooled values are *not* binary (a count or a mean per channel), so:

  - ``head = "binary"``: ``BinaryBlock(1x1 binary conv -> sum over positions -> norm)``.
    A linear map commutes with the sum, :math:`W \sum_p x_p = \sum_p W x_p`, so this
    is a binary linear classifier on the global *sum* of the ±1 maps (an integer per
    channel: the count of +1 minus the count of -1), computed as XNOR-popcount MACs on
    ±1 inputs and integer sums, so the whole network stays binary
    (:func:`binsense.compress.summary` flags it fully binary after a binary encoder) and
    its arithmetic exact. The norm absorbs the ``1/(H W)`` a mean would have;
  - ``head = "float"``: global *average* (real values in [-1, 1]), then a float
    ``nn.Linear``.

Size at ``width = 1`` (``base = 64``: channels 64-128-256, ``depth = 2``,
``groups = 4``, 10 classes; ``binsense summary --model compact_bnn``):

- grouped binary convs 294 912 weights, binary head 2 560;
- after the ``nbc`` encoder (24 ±1 planes): binary stem 13 824, so **311 296 one-bit
  weights**, 960 integer thresholds (9-11 bits) and the head norm's 20 affine values:
  321 472 bits = **0.307 Mbit, fully binary** (0.671 Mbit at ``width = 1.5``, 1.177
  Mbit at ``width = 2``);
- after the ``float`` encoder: a float stem of 1 728 weights, 301 140 trainable
  parameters in all (0.348 Mbit, not fully binary).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from torch import nn

from binsense.data import DatasetInfo
from binsense.errors import BinsenseError
from binsense.layers.block import BinaryBlock
from binsense.layers.design import DeSign
from binsense.layers.shape import ChannelShuffle, GlobalPool
from binsense.models.recipe import Components, RecipeModel, Width, scaled
from binsense.quant.sign import get_quantizer

PositiveInt = Annotated[int, Field(ge=1)]


def compact_bnn(
    info: DatasetInfo,
    comp: Components,
    *,
    width: Width = 1.0,
    base: PositiveInt = 64,
    stages: PositiveInt = 3,
    depth: PositiveInt = 2,
    shuffle: bool = True,
    downsample: Literal["max_pool", "stride"] = "max_pool",
    stem_stride: Literal[1, 2] = 1,
) -> nn.Module:
    """Compact grouped BNN (binsense's S3 topology; see the module docstring).

    ``base x width`` stem and first-stage channels, doubled at each of the ``stages``
    stages, ``depth`` grouped blocks per stage (``groups`` groups), a channel shuffle
    between grouped blocks (``shuffle``), downsampling by in-block max-pool or stride-2
    conv (``downsample``), and a global-pool head.
    """
    if comp.bn_affine is False and comp.norm != "batch_norm":
        raise BinsenseError("bn_affine = false applies to batch norm; set norm = 'batch_norm'.")
    if comp.design is not None and not comp.binary:
        raise BinsenseError("design (DeSign) replaces a sign: it needs a BNN, not a float twin.")
    binary, groups = comp.binary, comp.groups
    channels = [scaled(base * 2**s, width) for s in range(stages)]
    h, w = info.image_size
    side = [(h + stem_stride - 1) // stem_stride, (w + stem_stride - 1) // stem_stride]
    for _ in range(stages - 1):
        side = [s // 2 if downsample == "max_pool" else (s + 1) // 2 for s in side]
    if min(side) < 1:
        raise BinsenseError(
            f"compact_bnn with {stages} stages needs images of at least "
            f"{stem_stride * 2 ** (stages - 1)} px a side, got {h}x{w}."
        )

    def block(cin: int, cout: int, *, first: bool, stride: int = 1, pool: bool = False):
        layer_binary = binary and (
            not first or comp.first_layer == "binary" or encoder.binary
        )  # the rule of build_plain
        g = 1 if first else groups
        conv = comp.conv(layer_binary, cin, cout, stride=stride, groups=g)
        fan_in = 9 * cin // g
        if layer_binary:
            norm = comp.norm_for(cout, fan_in, True, affine=comp.bn_affine)
            act = comp.sign() if comp.design is None else DeSign(
                comp.design, get_quantizer(comp.activation_quantizer),
                bn=norm if comp.design_coupled else None,
            )  # fmt: skip
        else:
            norm, act = comp.norm_for(cout, fan_in, False), comp.act()
        return BinaryBlock(conv, norm, act, nn.MaxPool2d(2) if pool else None)

    encoder = comp.encoder_for(info)
    blocks: list[nn.Module] = [
        block(encoder.out_channels, channels[0], first=True, stride=stem_stride)
    ]
    cin = channels[0]
    for s, cout in enumerate(channels):
        for i in range(depth):
            down = s > 0 and i == 0
            if shuffle and groups > 1 and len(blocks) > 1:  # between two grouped blocks
                blocks.append(ChannelShuffle(groups))
            blocks.append(
                block(cin, cout, first=False, stride=2 if down and downsample == "stride" else 1,
                      pool=down and downsample == "max_pool")
            )  # fmt: skip
            cin = cout
    classes = info.num_classes
    if comp.head == "binary":
        # W . sum_p x_p = sum_p (W . x_p): the binary classifier as a 1x1 conv on the ±1
        # maps (XNOR-popcount MACs), then the sum over positions, then the norm
        fan_in = cin * side[0] * side[1]  # ±1 products summed into one head output
        head: nn.Module = BinaryBlock(
            comp.conv(binary, cin, classes, k=1, padding=0),
            comp.norm_for(classes, fan_in, binary, 1), nn.Identity(), pool=GlobalPool("sum"),
        )  # fmt: skip
    else:
        head = nn.Sequential(GlobalPool("mean"), nn.Linear(cin, classes))
    return RecipeModel(encoder, nn.Sequential(*blocks), head)


__all__ = ["compact_bnn"]
