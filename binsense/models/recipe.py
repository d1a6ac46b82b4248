r"""Model recipes: every registry model is ``encoder -> blocks -> head``.

A builder only *describes* a network — widths, pools, strides, shortcuts, groups — and
this module assembles it from components chosen by name, with typed and validated options
(:class:`Components`):

========================  ==================================================================
option                    meaning
========================  ==================================================================
``encoder``               input encoder (:data:`binsense.encoders.ENCODERS`): ``"float"``
``weight_quantizer``      sign quantizer of the binary weights, a name or
                          ``{name = "ste_sign", clip_value = 1.0}``; ``"none"`` keeps
                          them real (binary activations only: the first step of
                          two-step training)
``activation_quantizer``  sign quantizer of the block activations (same form)
``norm``                  ``"batch_norm"``, ``"channel_affine"`` or ``"none"``
``bn_affine``             learn :math:`\gamma, \beta` of the batch norms after binary convs
                          (``false``: frozen at 1, 0 — the DeSign authors' default)
``design``                DeSign kernel replacing the sign after binary convs (``None``: sign)
``design_coupled``        DeSign thresholds scaled by the BN's :math:`\gamma`
``groups``                groups of every binary 3x3 conv after the first
``first_layer``           ``"float"`` or ``"binary"`` weights in the first conv (always
                          binary after a binary encoder: it reads ±1 planes)
``head``                  ``"binary"`` (binary linear + norm, BinaryNet) or ``"float"``
``latent_clip``           bound of the latent weights after each step (``None``: off)
========================  ==================================================================

The float twin of a BNN is the same recipe with ``binary = False`` (float convs, ReLU).
:class:`RecipeModel` exposes ``forward_features`` (encoder and blocks) and
``forward_head`` (the classifier), as timm models do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import Tensor, nn

from binsense.data import DatasetInfo
from binsense.encoders import ENCODERS, InputEncoder, build_encoder
from binsense.errors import BinsenseError
from binsense.layers.binary import BinaryConv2d, BinaryLinear
from binsense.layers.block import BinaryBlock
from binsense.layers.design import DeSign, KernelSpec, get_design_kernel
from binsense.layers.norm import NORMS, make_norm
from binsense.quant.sign import get_quantizer
from binsense.registry import ComponentSpec, split_spec

#: A width multiplier: finite and positive.
Width = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def scaled(channels: int, width: float) -> int:
    """Channel count times a width multiplier, at least 1."""
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise BinsenseError(f"width must be a finite number > 0, got {width!r}.")
    return max(1, int(round(channels * width)))


def _check_spec(spec: Any, registry) -> Any:
    name, options = split_spec(spec, registry.kind)
    registry.resolve(name)
    return spec


class Components(BaseModel):
    """The components of a recipe (module docstring table), validated strictly."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    binary: bool = True
    encoder: ComponentSpec = "float"
    weight_quantizer: ComponentSpec = "ste_sign"
    activation_quantizer: ComponentSpec = "ste_sign"
    norm: str = "batch_norm"
    bn_affine: bool = True
    design: str | list | None = None
    design_coupled: bool = False
    groups: int = Field(1, ge=1)
    first_layer: Literal["float", "binary"] = "float"
    head: Literal["binary", "float"] = "binary"
    latent_clip: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = 1.0

    @field_validator("encoder")
    @classmethod
    def _encoder(cls, v: Any) -> Any:
        return _check_spec(v, ENCODERS)

    @field_validator("weight_quantizer", "activation_quantizer")
    @classmethod
    def _quantizer(cls, v: Any, info: ValidationInfo) -> Any:
        if v == "none" and info.field_name == "weight_quantizer":
            return v  # real weights, binary activations: two-step training's first step
        if v == "none":
            raise ValueError(
                "activation_quantizer cannot be 'none': a BNN's activations are binary "
                "(weight_quantizer = 'none' keeps real weights; a float twin is the "
                "model named <name>_float)"
            )
        get_quantizer(v)  # name and options checked by building one
        return v

    @field_validator("norm")
    @classmethod
    def _norm(cls, v: str) -> str:
        return NORMS.resolve(v)

    @field_validator("design")
    @classmethod
    def _design(cls, v: Any) -> Any:
        if v is not None:
            get_design_kernel(v)
        return v

    # ---------------------------------------------------------------- factories

    def encoder_for(self, info: DatasetInfo) -> InputEncoder:
        return build_encoder(self.encoder, info)

    def _weight_quantizer(self):
        """The binary layers' weight quantizer; ``None`` (real weights) for ``"none"``."""
        return None if self.weight_quantizer == "none" else get_quantizer(self.weight_quantizer)

    def conv(
        self, binary: bool, cin: int, cout: int, *, k: int = 3, stride: int = 1,
        padding: int = 1, groups: int = 1, bias: bool = False,
    ) -> nn.Module:  # fmt: skip
        """A 2-D convolution, binary-weight (this recipe's weight quantizer) or float."""
        if cin % groups or cout % groups:
            raise BinsenseError(
                f"groups={groups} must divide the channels of every grouped conv "
                f"(got {cin} -> {cout}); choose a width whose channel counts it divides."
            )
        if binary:
            return BinaryConv2d(
                cin, cout, k, stride, padding, groups=groups, bias=bias,
                weight_quantizer=self._weight_quantizer(),
                latent_clip=self.latent_clip,
            )  # fmt: skip
        return nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias)

    def linear(self, binary: bool, cin: int, cout: int, bias: bool = False) -> nn.Module:
        """A linear layer, binary-weight or float."""
        if binary:
            return BinaryLinear(
                cin, cout, bias, weight_quantizer=self._weight_quantizer(),
                latent_clip=self.latent_clip,
            )  # fmt: skip
        return nn.Linear(cin, cout, bias=bias)

    def sign(self) -> nn.Module:
        """The activation binarisation: this recipe's activation quantizer."""
        return get_quantizer(self.activation_quantizer)

    def act(self) -> nn.Module:
        """A hidden block's activation: the sign in a BNN, ReLU in its float twin."""
        return self.sign() if self.binary else nn.ReLU(inplace=False)

    def norm_for(
        self, channels: int, fan_in: int, binary: bool, dims: int = 2, affine: bool = True
    ) -> nn.Module:
        return make_norm(
            self.norm, channels, fan_in=fan_in, binary=binary, dims=dims, affine=affine
        )


class RecipeModel(nn.Module):
    """``head(blocks(encoder(x)))``, with timm's ``forward_features`` / ``forward_head``."""

    def __init__(self, encoder: InputEncoder, blocks: nn.Sequential, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.blocks = blocks
        self.head = head

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(self.encoder(x))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------ plain (VGG-like) recipes

Plan = Sequence[int | str]  # channel counts; "M" = 2x2 max-pool after the previous conv


def he_normal(conv: nn.Module) -> None:
    r"""He-normal conv weights, :math:`w \sim \mathcal N(0, 2/\text{fan-in})` (He et al.,
    ICCV 2015), and a zero bias: a ``conv_init`` that keeps ReLU activations at their scale
    through a deep net without batch norm."""
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


@dataclass(frozen=True)
class PlainRecipe:
    """A VGG-like network: 3x3 conv blocks from ``plan``, FC blocks ``fcs``, classifier.

    ``flat_side``: the spatial size after the last conv block. ``pool``: where an ``"M"``
    goes — ``"in_block"`` (conv -> pool -> norm -> act, BinaryNet) or ``"after_block"``
    (a separate max-pool after the activation, VGG). ``conv_bias`` gives the convs a
    bias, and ``conv_init`` runs on each conv right after it is made (float networks
    without BN).
    """

    plan: Plan
    fcs: Sequence[int]
    flat_side: tuple[int, int]
    padding: int = 1
    pool: Literal["in_block", "after_block"] = "in_block"
    head_bias: bool = True
    conv_bias: bool = False
    conv_init: Callable[[nn.Module], None] | None = field(default=None)


def _design_act(comp: Components, norm: nn.Module) -> nn.Module:
    kernel: KernelSpec = comp.design  # type: ignore[assignment]
    quantizer = get_quantizer(comp.activation_quantizer)
    return DeSign(kernel, quantizer, bn=norm if comp.design_coupled else None)


def build_plain(info: DatasetInfo, recipe: PlainRecipe, comp: Components) -> RecipeModel:
    """Assemble a :class:`PlainRecipe` with :class:`Components`; see the module docstring.

    Binary convs get the norm (batch norm with ``bn_affine``) and the sign or DeSign; the
    first conv is float unless ``first_layer = "binary"`` (binary weights on the encoder's
    output), FC blocks are ``linear -> norm -> sign``,
    and the head is a binary linear layer with a norm (BinaryNet) or a float linear layer.
    """
    encoder = comp.encoder_for(info)
    binary = comp.binary
    if comp.bn_affine is False and comp.norm != "batch_norm":
        raise BinsenseError("bn_affine = false applies to batch norm; set norm = 'batch_norm'.")
    if comp.design is not None and not binary:
        raise BinsenseError("design (DeSign) replaces a sign: it needs a BNN, not a float twin.")
    blocks: list[nn.Module] = []
    cin = encoder.out_channels
    plan = list(recipe.plan)
    first = True
    for i, c in enumerate(plan):
        if c == "M":
            if recipe.pool == "after_block":
                blocks.append(nn.MaxPool2d(2))
            continue
        c = int(c)
        layer_binary = binary and (not first or comp.first_layer == "binary" or encoder.binary)
        groups = comp.groups if binary and not first else 1
        conv = comp.conv(layer_binary, cin, c, padding=recipe.padding, groups=groups,
                         bias=recipe.conv_bias)  # fmt: skip
        if recipe.conv_init is not None:
            recipe.conv_init(conv)
        pool = None
        if recipe.pool == "in_block" and i + 1 < len(plan) and plan[i + 1] == "M":
            pool = nn.MaxPool2d(2)
        fan_in = 9 * cin // groups
        if layer_binary:
            norm = comp.norm_for(c, fan_in, True, affine=comp.bn_affine)
            act = comp.sign() if comp.design is None else _design_act(comp, norm)
        else:
            norm, act = comp.norm_for(c, fan_in, False), comp.act()
        blocks.append(BinaryBlock(conv, norm, act, pool))
        cin, first = c, False
    blocks.append(nn.Flatten())
    cin *= recipe.flat_side[0] * recipe.flat_side[1]
    for f in recipe.fcs:
        blocks.append(BinaryBlock(comp.linear(binary, cin, f), comp.norm_for(f, cin, binary, 1),
                                  comp.act()))  # fmt: skip
        cin = f
    classes = info.num_classes
    if comp.head == "binary":  # BinaryNet: binary weights then a norm (float twin: same)
        head: nn.Module = BinaryBlock(
            comp.linear(binary, cin, classes), comp.norm_for(classes, cin, binary, 1),
            nn.Identity(),
        )  # fmt: skip
    else:
        head = nn.Linear(cin, classes, bias=recipe.head_bias)
    return RecipeModel(encoder, nn.Sequential(*blocks), head)


__all__ = [
    "Components",
    "PlainRecipe",
    "RecipeModel",
    "Width",
    "build_plain",
    "scaled",
]
