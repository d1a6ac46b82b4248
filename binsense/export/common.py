r"""What every exporter needs from a :class:`~binsense.deploy.program.DeployedModel`.

- :func:`op_shapes`: each op's output shape for one input size (exports are static),
  computed without running an op, after a memory check;
- :func:`norm_affine`: a per-channel norm of a float stage as ``y = a x + b`` *in the
  arithmetic PyTorch uses*, checked bit for bit against the module;
- :func:`pm1_weight`, :func:`threshold_arrays`: the ±1 weights and the integer
  thresholds of the packed ops, as numpy arrays;
- :func:`pack_bits_u8`: bits packed 8 to a byte (little-endian bit order).

**Norms and rounding.** PyTorch's CPU batch norm in eval mode computes
:math:`a = \gamma / \sqrt{v + \epsilon}` (as ``rsqrt(v + eps) * gamma`` in float32; the
reciprocal square root may differ by one unit in the last place from ``1 / sqrt``),
:math:`b = \beta - \mu a` and :math:`y = a x + b`; depending on how it was compiled the
last two are fused multiply-adds (one rounding) or a product and a sum (two roundings).
A :class:`~binsense.layers.norm.ChannelAffine` or a
:class:`~binsense.layers.bn.QuantizedBatchNorm` is a product then a sum. To give the
same float32 results as the trained model, :func:`norm_affine` tries both arithmetic
forms and keeps the one that reproduces the module on probe inputs: every integer the
layer can output when its input is a popcount (an exhaustive check, as for the integer
thresholds), a float sample otherwise. An FMA is the exact one of
:func:`binsense.deploy.floatops.fma` (float64 with the double-rounding case mended).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from binsense.deploy import floatops, ir
from binsense.deploy.bits import unpack_bits
from binsense.deploy.program import DeployedModel
from binsense.errors import BinsenseError
from binsense.layers.bn import QuantizedBatchNorm
from binsense.layers.design import design_thresholds
from binsense.layers.norm import ChannelAffine
from binsense.quant.fixed import quantize_fixed_ste

#: Integers are exact in float32 below this bound (the exports compute popcounts in float).
FLOAT_EXACT = 1 << 24

#: Norms on integer inputs up to this magnitude are checked on every integer (exporters).
MAX_ENUMERATION = 1 << 17


def no_residual(deployed: DeployedModel, what: str) -> None:
    """Raise one line when ``deployed`` holds a residual unit (not exported)."""
    if any(isinstance(op, ir.ResidualOp) for op in deployed.ops):
        raise BinsenseError(
            f"the {what} export does not support residual units (the ResNet-18 BNN); run it "
            "with the packed engine (binsense deploy)."
        )


def op_shapes(deployed: DeployedModel, input_shape: tuple[int, int, int]) -> list[tuple]:
    """The output shape (without the batch axis) of every op, for images ``input_shape``
    (``C, H, W``), by the analytic walk (:meth:`DeployedModel.activation_shapes`: no op
    runs, every geometry field checked against the input, one line if one does not fit).

    The program's activations are checked first to fit in memory for two images
    (:meth:`DeployedModel.check_memory`; ``--allow-large`` or ``BINSENSE_ALLOW_LARGE=1``
    skips that): an export holds arrays as large as one image's maps (DeSign thresholds
    tiled over a map, the C arena) and the ONNX builder runs float modules on two images.
    """
    shown = "x".join(map(str, input_shape))
    what = f"exporting the deployed {deployed.source or 'program'} for images of shape {shown}"
    fix = "give the image size the program was built for"
    deployed.check_memory(input_shape, 2, what=what, workspace=False, fix=fix)
    return deployed.activation_shapes(input_shape)


def pm1_weight(op: ir.PackedConv | ir.PackedLinear) -> np.ndarray:
    """The ±1 weights of a packed op as int8: ``(C_out, C_in/g, k_h, k_w)`` for a conv,
    ``(out, fan_in)`` for a linear layer."""
    if isinstance(op, ir.PackedConv):
        return op.weight_pm1.cpu().numpy().astype(np.int8)
    bits = unpack_bits(op.weight_words.cpu(), op.fan_in, 1)
    return np.where(bits.numpy(), 1, -1).astype(np.int8)


def threshold_arrays(th: ir.Threshold, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``(tau, flip)`` int64 for a threshold on outputs of ``shape`` (no batch axis):
    ``(C,)`` per channel, or ``(C, m, n)`` per DeSign position class (tiled from the
    top-left corner of the ``H x W`` map by the caller)."""
    tau, flip = th.tau.cpu(), th.flip.cpu()
    if tau.dim() == 3 and len(shape) != 3:
        raise BinsenseError("position-class thresholds on a non-spatial layer.")
    return tau.numpy().astype(np.int64), flip.numpy().astype(np.int64)


def tiled(classes: np.ndarray, height: int, width: int) -> np.ndarray:
    """A ``(C, m, n)`` position-class array tiled over ``(C, H, W)`` from the top-left
    corner (:func:`binsense.layers.design.design_thresholds`)."""
    t = torch.from_numpy(classes.astype(np.float64))
    return design_thresholds(t, t.shape[0], height, width).numpy().astype(classes.dtype)


def pack_bits_u8(bits: np.ndarray) -> np.ndarray:
    """Bool ``bits`` (flattened, C order) packed 8 to a uint8, bit ``i % 8`` of byte
    ``i // 8`` (the last byte padded with 0)."""
    return np.packbits(np.asarray(bits, dtype=bool).reshape(-1), bitorder="little")


# ---------------------------------------------------------------- norms as affine maps


@dataclass(frozen=True)
class Affine:
    """A per-channel ``y = a x + b`` in float32; ``fused``: one rounding (an FMA), else a
    product and a sum; ``mismatches``: probe values where it differs from the module (0
    when exact)."""

    a: np.ndarray
    b: np.ndarray
    fused: bool
    mismatches: int = 0

    def __call__(self, x: np.ndarray, channel_axis: int = 1) -> np.ndarray:
        shape = [1] * x.ndim
        shape[channel_axis] = -1
        a, b = self.a.reshape(shape), self.b.reshape(shape)
        if self.fused:
            return fma32(x.astype(np.float32), a, b)
        return (x.astype(np.float32) * a).astype(np.float32) + b


def fma32(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x * a + b`` rounded once to float32, exactly (:func:`binsense.deploy.floatops.fma`)."""
    x, a, b = (torch.from_numpy(np.asarray(v, np.float32)) for v in (x, a, b))
    return floatops.fma(x, a, b).numpy()


def _candidates(m: nn.Module, channels: int) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """``(a, b, fused)`` forms the module may compute (module docstring)."""
    if isinstance(m, nn.Identity):
        ones = np.ones(channels, np.float32)
        return [(ones, np.zeros(channels, np.float32), False)]
    if isinstance(m, ChannelAffine):
        a, b = m.scale.detach().float().cpu().numpy(), m.shift.detach().float().cpu().numpy()
        return [(a, b, False), (a, b, True)]
    if isinstance(m, _BatchNorm):
        if m.running_mean is None or m.running_var is None:
            raise BinsenseError("a batch norm without running statistics does not export.")
        mean, var = m.running_mean.detach().float().cpu(), m.running_var.detach().float().cpu()
        w = m.weight.detach().float().cpu() if m.affine else torch.ones_like(mean)
        bias = m.bias.detach().float().cpu() if m.affine else torch.zeros_like(mean)
        if isinstance(m, QuantizedBatchNorm):
            a = w / torch.sqrt(var + m.eps)
            b = bias - a * mean
            aq = quantize_fixed_ste(a, m.bits).numpy()
            bq = quantize_fixed_ste(b, m.bits).numpy()
            return [(aq, bq, False), (aq, bq, True)]
        eps = torch.tensor(m.eps, dtype=torch.float32)
        forms = []
        for invstd in (torch.rsqrt(var + eps), 1 / torch.sqrt(var + eps)):
            a = (invstd * w).numpy()
            mean_n, bias_n = mean.numpy(), bias.numpy()
            b_fused = fma32(-mean_n, a, bias_n)
            b_plain = (bias_n - (mean_n * a).astype(np.float32)).astype(np.float32)
            forms += [(a, b_fused, True), (a, b_plain, False), (a, b_fused, False),
                      (a, b_plain, True)]  # fmt: skip
        return forms
    raise BinsenseError(
        f"a {type(m).__name__} in a float stage does not export (batch norm, channel affine "
        "or identity)."
    )


@torch.no_grad()
def norm_affine(m: nn.Module, channels: int, probe: Tensor) -> Affine:
    """The affine form of the norm ``m`` that reproduces it bit for bit on ``probe``
    (``(N, C, ...)`` float32 inputs; module docstring); the closest form, with its
    mismatch count, when none does."""
    m = m.eval()
    ref = m(probe.float()).numpy()
    x = probe.float().numpy()
    best: Affine | None = None
    for a, b, fused in _candidates(m, channels):
        form = Affine(a.astype(np.float32), b.astype(np.float32), fused)
        bad = int(np.sum(form(x).view(np.uint32) != ref.astype(np.float32).view(np.uint32)))
        if best is None or bad < best.mismatches:
            best = Affine(form.a, form.b, fused, bad)
        if bad == 0:
            break
    assert best is not None
    return best


def integer_probe(low: int, high: int, channels: int, spatial: bool) -> Tensor:
    """Every integer ``low..high`` on every channel, as a float32 batch for a norm."""
    values = torch.arange(low, high + 1, dtype=torch.float32)
    probe = values.view(-1, 1).expand(-1, channels).contiguous()
    return probe.view(-1, channels, 1, 1) if spatial else probe


def float_probe(channels: int, spatial: bool, seed: int = 0) -> Tensor:
    """A float32 sample over several scales, for norms on real-valued inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, channels, generator=g) * torch.logspace(-2, 2, 512).view(-1, 1)
    return x.view(-1, channels, 1, 1) if spatial else x


__all__ = [
    "MAX_ENUMERATION",
    "FLOAT_EXACT",
    "Affine",
    "float_probe",
    "fma32",
    "integer_probe",
    "no_residual",
    "norm_affine",
    "op_shapes",
    "pack_bits_u8",
    "pm1_weight",
    "threshold_arrays",
    "tiled",
]
