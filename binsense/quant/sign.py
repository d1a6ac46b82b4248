r"""Sign binarisation with straight-through estimators (STEs).

All quantizers here share one forward pass,

.. math::  q(x) = \operatorname{sign}(x) = \begin{cases} +1 & x \ge 0 \\ -1 & x < 0 \end{cases}

(zero maps to +1, so the output is always in {-1, +1}), and differ only in the surrogate
derivative :math:`\partial q / \partial x` used in the backward pass. Each is a small
:class:`torch.nn.Module` (so it shows in a model's ``repr`` and can be injected into any
layer, as in Larq and Brevitas) and is selectable by name through :func:`get_quantizer`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from binsense.registry import ComponentSpec, Registry, split_spec


def _sign(x: Tensor) -> Tensor:
    """sign with sign(0) = +1, same dtype as ``x``."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class _SurrogateSign(torch.autograd.Function):
    """sign(x) forward; ``grad * surrogate(x)`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, surrogate: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return _sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return grad * ctx.surrogate(x), None


class SignQuantizer(nn.Module):
    """Base class: ``forward`` is sign(x); subclasses define :meth:`surrogate_grad`."""

    def surrogate_grad(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return _SurrogateSign.apply(x, self.surrogate_grad)


class SteSign(SignQuantizer):
    r"""Clipped straight-through estimator (BinaryNet; Larq ``ste_sign``).

    .. math:: \frac{\partial q}{\partial x} = \mathbb{1}_{|x| \le c}

    with clip value :math:`c` (default 1). ``clip_value=None`` means no clipping, the plain
    straight-through estimator :math:`\partial q/\partial x = 1` everywhere, as in Larq
    (``clip_value=None``: "gradients are not clipped"). Reference: Hubara, Courbariaux et
    al., "Binarized Neural Networks", NeurIPS 2016; Larq ``larq.quantizers.SteSign``.
    """

    def __init__(self, clip_value: float | None = 1.0) -> None:
        super().__init__()
        if clip_value is not None and clip_value <= 0:
            raise ValueError(f"clip_value must be > 0 or None (no clipping), got {clip_value}")
        self.clip_value = None if clip_value is None else float(clip_value)

    def surrogate_grad(self, x: Tensor) -> Tensor:
        if self.clip_value is None:
            return torch.ones_like(x)
        return (x.abs() <= self.clip_value).to(x.dtype)

    def extra_repr(self) -> str:
        return f"clip_value={self.clip_value}"


class TriangleSign(SignQuantizer):
    r"""Triangle surrogate: derivative of a piecewise-quadratic approximation of sign.

    .. math:: \frac{\partial q}{\partial x} = \max\big(0,\ \tfrac{2}{w}(1 - |x|/w)\big)

    The triangle has half-width :math:`w` and area 2 (the height of the sign step). With
    :math:`w = 1` this is :math:`\max(0, 2 - |2x|)`, which is both Bi-Real Net's
    *ApproxSign* (Liu et al., ECCV 2018: :math:`F(x) = 2x \pm x^2` on :math:`|x|<1`) and the
    activation gradient used by ReCU / DeSign (Xu et al., ICCV 2021; Monroy et al., JSTSP
    2024). ``approx_sign`` is this quantizer with ``width=1``.
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.width = float(width)

    def surrogate_grad(self, x: Tensor) -> Tensor:
        w = self.width
        return ((2.0 / w) * (1.0 - x.abs() / w)).clamp_min(0.0)

    def extra_repr(self) -> str:
        return f"width={self.width}"


class SwishSign(SignQuantizer):
    r"""SwishSign surrogate (BNN+, Darabi et al., 2018; Larq ``SwishSign``).

    The forward pass is sign(x); the backward pass uses the derivative of
    :math:`SS_\beta(x) = 2\sigma(\beta x)\,[1 + \beta x (1 - \sigma(\beta x))] - 1`:

    .. math:: \frac{\partial q}{\partial x} =
        \frac{\beta\,\big(2 - \beta x \tanh(\beta x / 2)\big)}{1 + \cosh(\beta x)}

    which peaks at :math:`\beta` for :math:`x=0`, crosses zero where
    :math:`\beta x \tanh(\beta x/2) = 2`, i.e. at :math:`|x| \approx 2.3994/\beta`, and is
    negative beyond: two small negative lobes whose minimum, about :math:`-0.0738\,\beta`
    (7.4 % of the peak), lies at :math:`|x| \approx 3.4358/\beta`; the gradient then decays
    to 0. Default :math:`\beta = 5` (zero crossing at :math:`|x| \approx 0.48`, minimum
    :math:`\approx -0.37` at :math:`|x| \approx 0.69`).
    """

    def __init__(self, beta: float = 5.0) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = float(beta)

    def surrogate_grad(self, x: Tensor) -> Tensor:
        bx = (self.beta * x).clamp(-40.0, 40.0)  # cosh overflow guard; grad ~ 0 there
        return self.beta * (2.0 - bx * torch.tanh(bx / 2.0)) / (1.0 + torch.cosh(bx))

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


def _approx_sign() -> TriangleSign:
    """Bi-Real Net's ApproxSign: the triangle of half-width 1."""
    return TriangleSign(width=1.0)


QUANTIZERS: Registry = Registry("quantizer")
QUANTIZERS.add("ste_sign", SteSign)
QUANTIZERS.add("approx_sign", _approx_sign)
QUANTIZERS.add("triangle", TriangleSign)
QUANTIZERS.add("swish_sign", SwishSign)


def quantizer_names() -> list[str]:
    """Names accepted by :func:`get_quantizer`."""
    return QUANTIZERS.names()


def get_quantizer(spec: ComponentSpec | SignQuantizer | None, **kwargs) -> SignQuantizer | None:
    """Return a sign quantizer from a name (``"ste_sign"``, ``"approx_sign"``, ...).

    ``None`` passes through (no quantization); a :class:`SignQuantizer` instance is
    returned as is; a name, or a table ``{name = "ste_sign", clip_value = 1.5}``, builds
    one; keyword arguments add options (``clip_value``, ``width``, ``beta``), checked by
    name and type.
    """
    if spec is None or isinstance(spec, SignQuantizer):
        return spec
    if kwargs:
        name, options = split_spec(spec, "quantizer")
        spec = {"name": name, **options, **kwargs}
    return QUANTIZERS.build(spec)


__all__ = [
    "QUANTIZERS",
    "SignQuantizer",
    "SteSign",
    "TriangleSign",
    "SwishSign",
    "get_quantizer",
    "quantizer_names",
]
