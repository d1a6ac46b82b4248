r"""Binary convolution and linear layers with latent real-valued weights.

A binary layer keeps a real-valued *latent* weight :math:`W` (what the optimizer updates)
and uses :math:`W_b = \alpha \odot q_w(W)` in the forward pass, with :math:`q_w` a sign
quantizer from :mod:`binsense.quant` and :math:`\alpha` either 1 or, with ``scale=True``,
the per-output-channel mean absolute latent weight (XNOR-Net, Rastegari et al., ECCV
2016). Its input is binarised by ``input_quantizer`` (``None`` keeps it real, as for a
first layer fed with pixels):

.. math:: y = q_a(x) \ast W_b \;(+\, b)

Latent weights are kept in :math:`[-c, c]` (BinaryNet's clipping, ``c = 1``) by
:func:`clip_latent_weights`, called after each optimizer step. Quantizers are injected
(by name or instance), never copied into the layer's code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from binsense.quant import SignQuantizer, get_quantizer

QuantSpec = str | SignQuantizer | None


class _BinaryMixin:
    """Shared parts of :class:`BinaryConv2d` and :class:`BinaryLinear`."""

    weight: nn.Parameter
    weight_quantizer: SignQuantizer | None
    input_quantizer: SignQuantizer | None
    scale: bool
    latent_clip: float | None

    def _setup_binary(
        self,
        weight_quantizer: QuantSpec,
        input_quantizer: QuantSpec,
        scale: bool,
        latent_clip: float | None,
    ) -> None:
        self.weight_quantizer = get_quantizer(weight_quantizer)
        self.input_quantizer = get_quantizer(input_quantizer)
        self.scale = bool(scale)
        self.latent_clip = latent_clip

    def binary_weight(self) -> Tensor:
        """The weight used in the forward pass, :math:`\\alpha \\odot q_w(W)`."""
        w = self.weight
        wb = w if self.weight_quantizer is None else self.weight_quantizer(w)
        if self.scale:
            dims = tuple(range(1, w.dim()))
            wb = wb * w.abs().mean(dim=dims, keepdim=True)
        return wb

    def quantize_input(self, x: Tensor) -> Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    @torch.no_grad()
    def clip_latent_(self) -> None:
        """Clamp the latent weight to ``[-latent_clip, latent_clip]`` in place."""
        if self.latent_clip is not None:
            self.weight.clamp_(-self.latent_clip, self.latent_clip)


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """2-D convolution with binary weights (and, optionally, binary inputs).

    Accepts every :class:`torch.nn.Conv2d` argument (``groups`` included) plus:

    Args:
        weight_quantizer: quantizer for the latent weights (name or instance; default
            ``"ste_sign"``).
        input_quantizer: quantizer for the input activations; ``None`` (default) keeps
            the input real-valued. BNN blocks binarise here: BN -> (next layer's) sign.
        scale: multiply the binary weights by the per-output-channel mean |W|.
        latent_clip: bound for :func:`clip_latent_weights` (``None`` disables it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        *,
        weight_quantizer: QuantSpec = "ste_sign",
        input_quantizer: QuantSpec = None,
        scale: bool = False,
        latent_clip: float | None = 1.0,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )
        self._setup_binary(weight_quantizer, input_quantizer, scale, latent_clip)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quantize_input(x), self.binary_weight(), self.bias)


class BinaryLinear(_BinaryMixin, nn.Linear):
    """Linear layer with binary weights (and, optionally, binary inputs).

    Same extra arguments as :class:`BinaryConv2d`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        weight_quantizer: QuantSpec = "ste_sign",
        input_quantizer: QuantSpec = None,
        scale: bool = False,
        latent_clip: float | None = 1.0,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self._setup_binary(weight_quantizer, input_quantizer, scale, latent_clip)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quantize_input(x), self.binary_weight(), self.bias)


def clip_latent_weights(model: nn.Module) -> None:
    """Clamp the latent weights of every binary layer in ``model`` (call after ``step``)."""
    for m in model.modules():
        if isinstance(m, _BinaryMixin):
            m.clip_latent_()


def is_binary_layer(module: nn.Module) -> bool:
    """True for :class:`BinaryConv2d` / :class:`BinaryLinear`."""
    return isinstance(module, _BinaryMixin)


def has_binary_weights(module: nn.Module) -> bool:
    r"""True for a binary layer whose forward weights are :math:`\pm 1` (times a scale):
    not one built with ``weight_quantizer = None`` (real weights, binary activations:
    two-step training's first step)."""
    return is_binary_layer(module) and module.weight_quantizer is not None
