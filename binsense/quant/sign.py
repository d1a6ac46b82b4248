r"""Sign binarisation with straight-through estimators (STEs).

All quantizers here share one forward pass,

.. math::  q(x) = \operatorname{sign}(x) = \begin{cases} +1 & x \ge 0 \\ -1 & x < 0 \end{cases}

(zero maps to +1, so the output is always in {-1, +1}), and differ only in the surrogate
derivative :math:`\partial q / \partial x` used in the backward pass. Each is a small
:class:`torch.nn.Module` (so it shows in a model's ``repr`` and can be injected into any
layer, as in Larq and Brevitas) and is selectable by name through :func:`get_quantizer`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from binsense.registry import ComponentSpec, Registry, split_spec


def sign_pm1(x: Tensor) -> Tensor:
    """sign with sign(0) = +1, same dtype as ``x``."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


#: Set ``BINSENSE_FUSED_STE=0`` to run the sign quantizers as plain eager ops.
FUSED_ENV = "BINSENSE_FUSED_STE"


class _Fused:
    """``fn`` as one pointwise kernel (``torch.compile``, Inductor), else ``fn`` itself.

    Eager PyTorch runs ``torch.where(x >= 0, 1, -1)`` as two passes over the activation
    map and ``grad * (x.abs() <= c)`` as three or four; compiled, each is one loop that
    reads ``x`` (and ``grad``) once and writes once. The math is the same expression, so
    the results are the eager ones bit for bit (``tests/test_quant.py`` checks it for
    every quantizer in fp32 and bf16). Inside a model that is itself being compiled
    (``compile = true``) the plain expression is traced into the model's own kernels. If
    compiling fails (no C++ compiler, an unsupported device), one warning says so and the
    plain ops run from then on.
    """

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn = fn
        self.compiled: Callable[..., Tensor] | None = None
        self.failed = False

    def __call__(self, *args) -> Tensor:
        if self.failed or not _fusion_enabled() or torch.compiler.is_compiling():
            return self.fn(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=True, fullgraph=True)
        try:  # one kernel per dtype, rank and parameter value: more than dynamo's default 8
            with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
                return self.compiled(*args)
        except Exception as e:  # compiler missing or failing: plain ops from now on
            self.failed = True
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            warnings.warn(
                f"binsense: the fused sign kernel {self.fn.__name__} could not be compiled "
                f"({first}); using plain PyTorch ops (same results, slower). Set "
                f"{FUSED_ENV}=0 to skip the attempt.",
                RuntimeWarning,
                stacklevel=3,
            )
            return self.fn(*args)


#: Kernels kept per fused function (dtypes x ranks x clip values, widths or betas).
_RECOMPILE_LIMIT = 64


def _fusion_enabled() -> bool:
    return os.environ.get(FUSED_ENV, "1") != "0"


#: :func:`sign_pm1` as one fused pass where ``torch.compile`` works (the same values).
fused_sign_pm1 = _Fused(sign_pm1)


class _SurrogateSign(torch.autograd.Function):
    """sign(x) forward; ``grad * surrogate(x, *params)`` backward, each one fused pass."""

    @staticmethod
    def forward(ctx, x: Tensor, backward: _Fused, params: tuple) -> Tensor:
        ctx.save_for_backward(x)
        ctx.backward_kernel, ctx.params = backward, params
        return fused_sign_pm1(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return ctx.backward_kernel(grad, x, *ctx.params), None, None


def _surrogate_backward(surrogate: Callable[..., Tensor], fuse: bool) -> _Fused:
    """The fused (``fuse``) or plain ``grad * surrogate(x, *params)`` of one formula."""

    def backward(grad: Tensor, x: Tensor, *params) -> Tensor:
        return grad * surrogate(x, *params)

    backward.__name__ = f"{surrogate.__name__}_backward"
    fused = _Fused(backward)
    fused.failed = not fuse
    return fused


class SignQuantizer(nn.Module):
    """Base class: ``forward`` is sign(x); the backward pass is ``grad * surrogate``.

    A subclass names its surrogate derivative as a pure function of ``x`` and plain
    numbers, ``surrogate(x, *params)`` (a class attribute), and returns those numbers
    from :meth:`params`. Being pure, the formula compiles once per dtype into a single
    fused pass (not once per layer), and :meth:`surrogate_grad` evaluates it eagerly.
    """

    surrogate: Callable[..., Tensor]
    #: Compile the backward into one pass; off where the compiled math is not the
    #: eager math bit for bit.
    fuse_backward: bool = True
    _backward: _Fused

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        surrogate = cls.__dict__.get("surrogate")
        if surrogate is not None:
            cls.surrogate = staticmethod(surrogate)
            cls._backward = _surrogate_backward(surrogate, cls.__dict__.get("fuse_backward", True))

    def params(self) -> tuple:
        """The numbers the surrogate takes after ``x`` (clip value, width, beta)."""
        return ()

    def surrogate_grad(self, x: Tensor) -> Tensor:
        """The surrogate derivative :math:`\\partial q / \\partial x` at ``x``."""
        return type(self).surrogate(x, *self.params())

    def forward(self, x: Tensor) -> Tensor:
        return _SurrogateSign.apply(x, type(self)._backward, self.params())


def _ste_surrogate(x: Tensor, clip_value: float | None) -> Tensor:
    if clip_value is None:
        return torch.ones_like(x)
    return (x.abs() <= clip_value).to(x.dtype)


def _triangle_surrogate(x: Tensor, width: float) -> Tensor:
    return ((2.0 / width) * (1.0 - x.abs() / width)).clamp_min(0.0)


def _swish_surrogate(x: Tensor, beta: float) -> Tensor:
    bx = (beta * x).clamp(-40.0, 40.0)  # cosh overflow guard; grad ~ 0 there
    return beta * (2.0 - bx * torch.tanh(bx / 2.0)) / (1.0 + torch.cosh(bx))


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

    surrogate = _ste_surrogate

    def params(self) -> tuple:
        return (self.clip_value,)

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

    surrogate = _triangle_surrogate

    def params(self) -> tuple:
        return (self.width,)

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

    surrogate = _swish_surrogate
    # The compiled tanh and cosh differ from ATen's by a few ulps (up to 7e-6 relative,
    # 0.5 % of elements, measured): the backward keeps the plain ops, so that the
    # gradient is exactly the documented one.
    fuse_backward = False

    def params(self) -> tuple:
        return (self.beta,)

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
    "fused_sign_pm1",
    "sign_pm1",
    "SteSign",
    "TriangleSign",
    "SwishSign",
    "get_quantizer",
    "quantizer_names",
]
