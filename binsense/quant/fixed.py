r"""Signed k-bit fixed-point quantization (the format of quantized batch-norm parameters).

A signed fixed-point number with :math:`k` bits, :math:`f` of them fractional, is an
integer :math:`q \in [-2^{k-1},\ 2^{k-1}-1]` times the step :math:`2^{-f}`:

.. math:: Q_{k,f}(x) = 2^{-f}\,\operatorname{clamp}\!\big(\operatorname{round}(x\,2^{f}),
          \,-2^{k-1},\ 2^{k-1}-1\big)

Rounding is to nearest with ties to even (:func:`torch.round`); values outside the range
saturate. :math:`f` may be negative (a step larger than 1) or larger than :math:`k`.

*Automatic fractional bits* (``frac_bits="auto"``, our default, per tensor): the largest
:math:`f` for which the largest finite magnitude of the tensor fits without saturation,

.. math:: f = \Big\lfloor \log_2 \frac{2^{k-1}-1}{\max_{i:\,x_i\ \mathrm{finite}} |x_i|}
          \Big\rfloor

(:math:`f = 0` for a tensor with no finite non-zero value). This is the usual power-of-two
"dynamic fixed point" choice (e.g. Gysel et al., *Ristretto*, 2016); the S0 paper's exact
format is not known (see ``docs/studies.md``), so this is binsense's choice. With
``axis=d`` each index along dimension ``d`` (e.g. each channel) gets its own automatic
:math:`f`, the maximum running over that slice only (per-channel scaling, as in per-channel
weight quantization, Krishnamoorthi, 2018); the default ``axis=None`` is one :math:`f` for
the whole tensor. The maximum and :math:`f` are computed in float32, and :math:`f` is
limited to :math:`[k-1-127,\ 126]` so that the step :math:`2^{-f}` is a normal float32 and
the range end stays below :math:`2^{128}` (finite); only extreme maxima reach these limits
(above about :math:`2^{127}`, or below :math:`(2^{k-1}-1)\,2^{-127}`), and
:func:`auto_frac_bits` never overflows.

*Non-finite values* (binsense's choice) do not poison the other values: NaN and
:math:`\pm\infty` are left out of the maximum above, then NaN stays NaN and
:math:`\pm\infty` saturates to the range ends :math:`-2^{k-1}\,2^{-f}` and
:math:`(2^{k-1}-1)\,2^{-f}`, exactly as a finite value beyond the range does (a fixed-point
code has no infinity). For example ``quantize_fixed([0.30, 0.70, nan, -1.20], 8)`` uses
:math:`f = \lfloor\log_2(127/1.2)\rfloor = 6` and gives ``[0.296875, 0.703125, nan, -1.203125]``.
The same holds for an explicit ``frac_bits``, :func:`quantize_fixed_ste` and
:class:`FixedQuantizer`.

``bits=32`` is not a 32-bit fixed-point format: it means *the float32 baseline* and
passes the tensor through unchanged. Valid widths are 2..24 (a float32 holds every
24-bit fixed-point value exactly) and 32.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from binsense.errors import BinsenseError

FLOAT_BITS = 32
"""The bit width that means "float32, not quantized"."""

MAX_FIXED_BITS = 24

_F32_MAX_EXP = 127  # float32: largest finite value < 2**128, smallest normal 2**-126
_F32_MIN_NORMAL_EXP = -126

FracBits = int | Literal["auto"]


def check_bits(bits: int) -> int:
    """Validate a fixed-point width: 2..24, or 32 for the float baseline."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise BinsenseError(f"bits must be an integer, got {bits!r}.")
    if bits != FLOAT_BITS and not 2 <= bits <= MAX_FIXED_BITS:
        raise BinsenseError(
            f"bits must be between 2 and {MAX_FIXED_BITS} (fixed point) or {FLOAT_BITS} "
            f"(float baseline), got {bits}."
        )
    return bits


def _check_axis(x: Tensor, axis: int | None) -> int | None:
    """``axis`` normalised to 0..dim-1 (``None`` passes)."""
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
        raise BinsenseError(
            f"axis must be None (one scale per tensor) or a dimension of the {x.dim()}-D "
            f"tensor (one scale per index along it), got {axis!r}."
        )
    return axis % x.dim()


def _frac_bits_tensor(x: Tensor, bits: int, axis: int | None = None) -> Tensor:
    """Auto fractional bits of ``x`` as a float tensor (no host sync).

    0-d for ``axis=None``; otherwise ``x``'s rank with size 1 except along ``axis`` (so it
    broadcasts against ``x``). Non-finite values are left out of the maximum.
    """
    a = x.detach().abs()
    a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
    if axis is None:
        m = a.amax()
    else:
        dims = [d for d in range(x.dim()) if d != axis]
        m = a.amax(dim=dims, keepdim=True) if dims else a  # amax(dim=[]) would reduce all
    m = m.float()
    qmax = float(2 ** (bits - 1) - 1)
    # qmax / m overflows to inf for a subnormal m: the clamp keeps f (and the step) finite.
    f = torch.floor(torch.log2(qmax / m)).clamp((bits - 1) - _F32_MAX_EXP, -_F32_MIN_NORMAL_EXP)
    return torch.where(m > 0, f, torch.zeros_like(f))


def auto_frac_bits(x: Tensor, bits: int) -> int:
    r"""Automatic fractional bits of ``x``: :math:`\lfloor\log_2((2^{k-1}-1)/\max|x|)\rfloor`.

    The maximum runs over the finite values (module docstring); never raises for NaN or
    infinite entries. :func:`auto_frac_bits_tensor` gives the per-channel form.
    """
    check_bits(bits)
    if bits == FLOAT_BITS:
        raise BinsenseError("bits=32 is the float baseline; it has no fractional bits.")
    return int(_frac_bits_tensor(x, bits).item())


def auto_frac_bits_tensor(x: Tensor, bits: int, axis: int | None = None) -> Tensor:
    """Automatic fractional bits as a float tensor, without a host sync.

    ``axis=None``: a 0-d tensor (the value of :func:`auto_frac_bits`). ``axis=d``: one
    value per index along ``d``, shaped to broadcast against ``x`` (size 1 elsewhere);
    ``torch.exp2(-f)`` is then the per-channel step.
    """
    check_bits(bits)
    if bits == FLOAT_BITS:
        raise BinsenseError("bits=32 is the float baseline; it has no fractional bits.")
    return _frac_bits_tensor(x, bits, _check_axis(x, axis))


def _quantize(
    x: Tensor, bits: int, frac_bits: FracBits, axis: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Quantized ``x`` and the representable range ``(lo, hi)`` (tensors)."""
    axis = _check_axis(x, axis)
    if frac_bits == "auto":
        if x.numel() == 0:
            step = torch.ones((), dtype=x.dtype, device=x.device)
        else:
            step = torch.exp2(-_frac_bits_tensor(x, bits, axis)).to(x.dtype)
    elif isinstance(frac_bits, int) and not isinstance(frac_bits, bool):
        if axis is not None:
            raise BinsenseError(
                f"axis={axis} (per-channel scaling) needs frac_bits='auto'; an explicit "
                f"frac_bits={frac_bits} is one scale for the whole tensor, so drop axis."
            )
        step = torch.tensor(2.0**-frac_bits, dtype=x.dtype, device=x.device)
    else:
        raise BinsenseError(f"frac_bits must be an integer or 'auto', got {frac_bits!r}.")
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.round(x / step).clamp(qmin, qmax) * step
    return q, qmin * step, qmax * step


def quantize_fixed(
    x: Tensor, bits: int, frac_bits: FracBits = "auto", axis: int | None = None
) -> Tensor:
    """Round ``x`` to the signed ``bits``-bit fixed-point grid (see the module docstring).

    Args:
        x: any floating tensor. NaN stays NaN, ±inf saturates to the range ends; neither
            changes the automatic fractional bits of the other values.
        bits: total width including the sign bit (2..24), or 32 for float passthrough.
        frac_bits: fractional bits ``f`` (step ``2**-f``), or ``"auto"``: chosen from
            the largest finite ``|x|`` so that it fits.
        axis: with ``frac_bits="auto"``: ``None`` (default) for one ``f`` for the whole
            tensor, or a dimension whose every index (e.g. channel) gets its own ``f``.
    """
    if check_bits(bits) == FLOAT_BITS:
        return x
    return _quantize(x, bits, frac_bits, axis)[0]


class _FixedSTE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x: Tensor, bits: int, frac_bits: FracBits, zero_outside: bool, axis: int | None
    ) -> Tensor:
        q, lo, hi = _quantize(x, bits, frac_bits, axis)
        ctx.save_for_backward((x >= lo) & (x <= hi) if zero_outside else None)
        return q

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inside,) = ctx.saved_tensors
        if inside is not None:
            grad = grad * inside.to(grad.dtype)
        return grad, None, None, None, None


def quantize_fixed_ste(
    x: Tensor,
    bits: int,
    frac_bits: FracBits = "auto",
    zero_outside: bool = False,
    axis: int | None = None,
) -> Tensor:
    r""":func:`quantize_fixed` with a straight-through gradient (quantization-aware training).

    Backward: :math:`\partial Q/\partial x = 1`, or, with ``zero_outside``,
    :math:`\mathbb{1}[x \in [-2^{k-1}, 2^{k-1}-1]\,2^{-f}]` (no gradient where the value
    saturates, nor at ±inf or NaN). Reference: Bengio et al., 2013 (straight-through
    estimator); Jacob et al., CVPR 2018 (quantization-aware training). ``bits=32`` is the
    identity. ``axis`` as in :func:`quantize_fixed`.
    """
    if check_bits(bits) == FLOAT_BITS:
        return x
    return _FixedSTE.apply(x, bits, frac_bits, zero_outside, axis)


class FixedQuantizer(nn.Module):
    """Module form of :func:`quantize_fixed_ste` (fixed point forward, STE backward)."""

    def __init__(
        self,
        bits: int,
        frac_bits: FracBits = "auto",
        zero_outside: bool = False,
        axis: int | None = None,
    ) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.frac_bits = frac_bits
        self.zero_outside = bool(zero_outside)
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        return quantize_fixed_ste(x, self.bits, self.frac_bits, self.zero_outside, self.axis)

    def extra_repr(self) -> str:
        s = f"bits={self.bits}, frac_bits={self.frac_bits!r}, zero_outside={self.zero_outside}"
        return s if self.axis is None else f"{s}, axis={self.axis}"


__all__ = [
    "FLOAT_BITS",
    "FixedQuantizer",
    "auto_frac_bits",
    "auto_frac_bits_tensor",
    "check_bits",
    "quantize_fixed",
    "quantize_fixed_ste",
]
