r"""Signed k-bit fixed-point quantization (the format of quantized batch-norm parameters).

A signed fixed-point number with :math:`k` bits, :math:`f` of them fractional, is an
integer :math:`q \in [-2^{k-1},\ 2^{k-1}-1]` times the step :math:`2^{-f}`:

.. math:: Q_{k,f}(x) = 2^{-f}\,\operatorname{clamp}\!\big(\operatorname{round}(x\,2^{f}),
          \,-2^{k-1},\ 2^{k-1}-1\big)

Rounding is to nearest with ties to even (:func:`torch.round`); values outside the range
saturate. :math:`f` may be negative (a step larger than 1) or larger than :math:`k`.

*Automatic fractional bits* (``frac_bits="auto"``, our default, per tensor): the largest
:math:`f` for which the largest magnitude of the tensor fits without saturation,

.. math:: f = \Big\lfloor \log_2 \frac{2^{k-1}-1}{\max_i |x_i|} \Big\rfloor

(:math:`f = 0` for an all-zero tensor). This is the usual power-of-two "dynamic fixed
point" choice (e.g. Gysel et al., *Ristretto*, 2016); the S0 paper's exact format is not
known (see ``research/STUDIES.md``), so this is binsense's choice.

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


def _frac_bits_tensor(x: Tensor, bits: int) -> Tensor:
    """Auto fractional bits of ``x`` as a 0-d float tensor (no host sync)."""
    m = x.detach().abs().amax().float()
    qmax = float(2 ** (bits - 1) - 1)
    f = torch.floor(torch.log2(qmax / m))
    return torch.where(m > 0, f, torch.zeros_like(f))


def auto_frac_bits(x: Tensor, bits: int) -> int:
    r"""Automatic fractional bits of ``x``: :math:`\lfloor\log_2((2^{k-1}-1)/\max|x|)\rfloor`."""
    check_bits(bits)
    if bits == FLOAT_BITS:
        raise BinsenseError("bits=32 is the float baseline; it has no fractional bits.")
    return int(_frac_bits_tensor(x, bits).item())


def _quantize(x: Tensor, bits: int, frac_bits: FracBits) -> tuple[Tensor, Tensor, Tensor]:
    """Quantized ``x`` and the representable range ``(lo, hi)`` (tensors)."""
    if frac_bits == "auto":
        step = torch.exp2(-_frac_bits_tensor(x, bits)).to(x.dtype)
    elif isinstance(frac_bits, int) and not isinstance(frac_bits, bool):
        step = torch.tensor(2.0**-frac_bits, dtype=x.dtype, device=x.device)
    else:
        raise BinsenseError(f"frac_bits must be an integer or 'auto', got {frac_bits!r}.")
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.round(x / step).clamp(qmin, qmax) * step
    return q, qmin * step, qmax * step


def quantize_fixed(x: Tensor, bits: int, frac_bits: FracBits = "auto") -> Tensor:
    """Round ``x`` to the signed ``bits``-bit fixed-point grid (see the module docstring).

    Args:
        x: any floating tensor.
        bits: total width including the sign bit (2..24), or 32 for float passthrough.
        frac_bits: fractional bits ``f`` (step ``2**-f``), or ``"auto"``: chosen from
            ``max|x|`` of the whole tensor so that it fits.
    """
    if check_bits(bits) == FLOAT_BITS:
        return x
    return _quantize(x, bits, frac_bits)[0]


class _FixedSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, bits: int, frac_bits: FracBits, zero_outside: bool) -> Tensor:
        q, lo, hi = _quantize(x, bits, frac_bits)
        ctx.save_for_backward((x >= lo) & (x <= hi) if zero_outside else None)
        return q

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inside,) = ctx.saved_tensors
        if inside is not None:
            grad = grad * inside.to(grad.dtype)
        return grad, None, None, None


def quantize_fixed_ste(
    x: Tensor, bits: int, frac_bits: FracBits = "auto", zero_outside: bool = False
) -> Tensor:
    r""":func:`quantize_fixed` with a straight-through gradient (quantization-aware training).

    Backward: :math:`\partial Q/\partial x = 1`, or, with ``zero_outside``,
    :math:`\mathbb{1}[x \in [-2^{k-1}, 2^{k-1}-1]\,2^{-f}]` (no gradient where the value
    saturates). Reference: Bengio et al., 2013 (straight-through estimator); Jacob et al.,
    CVPR 2018 (quantization-aware training). ``bits=32`` is the identity.
    """
    if check_bits(bits) == FLOAT_BITS:
        return x
    return _FixedSTE.apply(x, bits, frac_bits, zero_outside)


class FixedQuantizer(nn.Module):
    """Module form of :func:`quantize_fixed_ste` (fixed point forward, STE backward)."""

    def __init__(self, bits: int, frac_bits: FracBits = "auto", zero_outside: bool = False) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.frac_bits = frac_bits
        self.zero_outside = bool(zero_outside)

    def forward(self, x: Tensor) -> Tensor:
        return quantize_fixed_ste(x, self.bits, self.frac_bits, self.zero_outside)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, frac_bits={self.frac_bits!r}, zero_outside={self.zero_outside}"


__all__ = [
    "FLOAT_BITS",
    "FixedQuantizer",
    "auto_frac_bits",
    "check_bits",
    "quantize_fixed",
    "quantize_fixed_ste",
]
