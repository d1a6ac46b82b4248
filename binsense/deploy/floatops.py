r"""The float parts of a deployed model in one fixed summation order, whatever the batch.

A deployed model keeps a few float32 layers: a float first conv (on the pixel values or a
float encoder's output) and a float classifier. PyTorch's CPU convolution and GEMM
choose their kernels by shape, so the *batch size* changes the order in which a dot
product is summed and so the last bit of the result: oneDNN sums a direct convolution
tap by tap at a batch of 32 but takes another kernel for one image, and a float
``Linear`` at batch 24 differs from batch 1 on AMD EPYC. Before a sign, a last-bit
difference flips a bit at a near tie; in a logit, it is the logit. A deployed model must
give one answer per image, so its float layers are *defined* here, once, and every
backend (this engine, the ONNX / QONNX graphs, the C export) computes that definition.

**The definition.** For each image, group and output position of a convolution
:math:`y = b + \sum_t x_t w_t` the accumulator starts at :math:`+0` and takes the taps
:math:`t = (i, j, c)` (kernel row, kernel column, then input channel of the group; taps in
the zero padding skipped) one at a time as a fused multiply-add,

.. math:: a \leftarrow \operatorname{fma}(x_t, w_t, a) = \operatorname{rn}(x_t w_t + a),

one rounding to float32 (round to nearest, ties to even) per tap; the bias, if any, is
added last, :math:`y = \operatorname{rn}(a + b)`. A linear layer is the :math:`1 \times 1`
case: its inputs in index order. This is the order of oneDNN's direct convolution (so
the engine equals batched PyTorch on the AVX2 / AVX-512 CPUs binsense was checked on)
and of onnxruntime's MLAS GEMM; on ±1 inputs (a float head after a binary layer) each
FMA is an exact add and the definition is the plain left-to-right sum.

**Two implementations, the same bits.** The C kernel (``xnor_float_conv`` in
:mod:`binsense.deploy.kernels`: ``fmaf``, one ``vfmadd`` on an FMA CPU; on the XNOR
kernels' path, portable, AVX2 with 64 output channels in registers, or AVX-512 with 16
output positions per register and padded taps masked out) runs wherever the kernel
library is built; :func:`conv2d_reference` is the PyTorch fallback. PyTorch has no
fused multiply-add, so :func:`fma` computes it exactly through float64: the product of
two float32 values is exact in float64 (24 + 24 < 53 bits), the sum is rounded once to
float64, and the one case where rounding twice (to float64, then float32) differs from
rounding once, a float64 sum exactly halfway between two float32 values while the exact
sum is not, is detected with the exact error term of Knuth's TwoSum and mended by a step
of one float64 ulp toward the exact sum (the round-to-odd argument of Boldo and
Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using
rounding to odd", IEEE Trans. Computers 57(4), 2008).

References: IEEE 754-2008 §5.4.1 (fusedMultiplyAdd); D. E. Knuth, TAOCP vol. 2, §4.2.2
(TwoSum); oneDNN's convolution dispatch (kernels chosen by problem shape).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from binsense.deploy import kernels

#: The tap order of every float conv: kernel row, kernel column, then input channel.
ORDER = "ijc"


def fma(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """``x * y + z`` rounded once to float32 (IEEE fusedMultiplyAdd), for float32
    tensors (broadcast), exact by construction (module docstring).

    With :math:`s = \\operatorname{rn}_{64}(xy + z)`, :math:`e` its TwoSum error and
    :math:`n = \\operatorname{rn}_{32}(s)`, :math:`d = s - n` (exact, Sterbenz): :math:`s`
    lies halfway between two float32 values iff :math:`d \ne 0` and :math:`n + 2d` is a
    float32 value (the other one). Only there can rounding twice differ from rounding
    once, and the exact sum lies on the side of :math:`e`. The ONNX export writes the same
    steps as graph nodes (:meth:`binsense.export.onnx.GraphBuilder.fma`)."""
    p = x.double() * y.double()  # exact
    z64 = z.double()
    s = p + z64  # rounded once to float64
    t = s - p
    err = (p - (s - t)) + (z64 - t)  # TwoSum: s + err == p + z64 exactly
    near = s.float()
    d = s - near.double()
    other = near.double() + 2 * d
    halfway = d.ne(0) & other.float().double().eq(other) & err.ne(0)
    up = torch.maximum(near, other.float())
    down = torch.minimum(near, other.float())
    return torch.where(halfway, torch.where(err > 0, up, down), near)


def tap_major(weight: Tensor, groups: int) -> Tensor:
    """A conv weight ``(O, C / G, KH, KW)`` as the kernel reads it: ``(G, KH, KW, C / G,
    O / G)``, contiguous float32 (the output channels of one tap side by side)."""
    o, cg, kh, kw = weight.shape
    w = weight.detach().to(torch.float32).reshape(groups, o // groups, cg, kh, kw)
    return w.permute(0, 3, 4, 2, 1).contiguous()


def conv2d_reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int,
) -> Tensor:
    """The fixed-order float conv (module docstring) in PyTorch ops (slow; the kernel's
    fallback and its check)."""
    x, weight = x.to(torch.float32), weight.detach().to(torch.float32)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    og = o // groups
    out = torch.empty(n, o, ho, wo)
    rows = torch.arange(ho) * sh - ph
    cols = torch.arange(wo) * sw - pw
    for g in range(groups):
        acc = torch.zeros(n, og, ho, wo)
        for i in range(kh):
            for j in range(kw):
                ys, xs = rows + i, cols + j
                inside = (ys >= 0) & (ys < h)
                inside = inside[:, None] & ((xs >= 0) & (xs < w))[None, :]
                taps = x[:, g * cg : (g + 1) * cg][:, :, ys.clamp(0, h - 1)][
                    :, :, :, xs.clamp(0, w - 1)
                ]
                for ch in range(cg):
                    v = taps[:, ch : ch + 1]
                    wt = weight[g * og : (g + 1) * og, ch, i, j].view(1, og, 1, 1)
                    acc = torch.where(inside, fma(v, wt, acc), acc)  # padding: skipped
        out[:, g * og : (g + 1) * og] = acc
    if bias is not None:
        out = out + bias.detach().to(torch.float32).view(1, o, 1, 1)
    return out


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    groups: int = 1,
) -> Tensor:
    """The fixed-order float conv: the C kernel where it is built, else
    :func:`conv2d_reference` (the same bits)."""
    kernel = tuple(weight.shape[2:])
    if x.device.type == "cpu":
        y = kernels.float_conv(
            x, tap_major(weight, groups), bias, weight.shape[0], kernel, stride, padding, groups
        )
        if y is not None:
            return y
    return conv2d_reference(x, weight, bias, stride, padding, groups)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The fixed-order float linear layer (inputs in index order, bias last)."""
    k = weight.shape[1]
    y = conv2d(x.reshape(-1, k, 1, 1), weight.reshape(weight.shape[0], k, 1, 1), bias)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def _fixed(m: nn.Module) -> bool:
    """Whether ``m`` is a conv or linear layer this module computes (else PyTorch does)."""
    if isinstance(m, nn.Linear):
        return True
    return (
        isinstance(m, nn.Conv2d)
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
        and m.dilation == (1, 1)
    )


def _leaf(module: nn.Module, x: Tensor) -> Tensor:
    """A conv or linear layer (:func:`_fixed`) in the fixed order, as its own forward
    would compute it (a binary layer's input sign and binary weight included)."""
    quantize = getattr(module, "quantize_input", None)
    x = quantize(x) if quantize is not None else x
    weight = module.binary_weight() if hasattr(module, "binary_weight") else module.weight
    if isinstance(module, nn.Linear):
        return linear(x, weight, module.bias)
    return conv2d(x, weight, module.bias, module.stride, module.padding, module.groups)


@contextmanager
def ordered(*roots: nn.Module) -> Iterator[None]:
    """Within the block, every conv and linear layer under ``roots`` computes in the fixed
    order (its ``forward`` replaced, then restored): the trained layers a deployed
    model's float stages were lowered from, run as the deployed model defines them
    (:meth:`binsense.deploy.program.DeployedModel.reference`)."""
    patched = []
    for root in roots:
        for m in root.modules():
            if _fixed(m) and "forward" not in m.__dict__:
                m.forward = functools.partial(_leaf, m)
                patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


__all__ = [
    "ORDER",
    "conv2d",
    "conv2d_reference",
    "fma",
    "linear",
    "ordered",
    "tap_major",
]
