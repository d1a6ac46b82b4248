r"""The typed float ops of a deployed program: what a float stage (a float encoder or
first block, a float head, a residual unit's float part) is lowered to.

:func:`lower` turns the trained modules of a float stage into frozen dataclasses that
hold tensors and plain values only: no :class:`~torch.nn.Module` stays in a program, so
every reader (the reference run, the packed engine, the file format, ONNX, QONNX, C)
reads one table of op types, not PyTorch's class tree. Each op's :meth:`FloatOp.run` is
the trained module's arithmetic, bit for bit: the same functional call
(``F.batch_norm``, ``F.max_pool2d``, the functions the modules themselves call), and
every conv and linear layer summed in the one order of :mod:`binsense.deploy.floatops`.

**Norms as affine maps, decided once.** The exports compute a norm as
:math:`y = a x + b` per channel. PyTorch's CPU batch norm in eval mode computes
:math:`a = \gamma / \sqrt{v + \epsilon}` (as ``rsqrt(v + eps) * gamma`` in float32; the
reciprocal square root may differ by one unit in the last place from ``1 / sqrt``),
:math:`b = \beta - \mu a` and :math:`y = a x + b`; depending on how it was compiled the
last two are fused multiply-adds (one rounding) or a product and a sum (two roundings).
:func:`norm_affine` tries each form and keeps the one that reproduces the module on
probe inputs: every integer the norm can see when its input is an integer (a popcount
up to :data:`MAX_ENUMERATION`: exhaustive, as for the integer thresholds), a float sample
otherwise. :func:`lower` runs it and records the form in the :class:`BatchNorm` op
(:attr:`Affine.mismatches` 0 when exact), so deploy and every export agree on it. A
:class:`~binsense.layers.norm.ChannelAffine` or a
:class:`~binsense.layers.bn.QuantizedBatchNorm` *is* a product then a sum
(:class:`ScaleShift`). An FMA is the exact one of :func:`binsense.deploy.floatops.fma`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from binsense.deploy import floatops
from binsense.deploy.plain import (
    check_geometry,
    plain_choice,
    plain_flag,
    plain_float,
    plain_int,
    plain_pair,
    plain_tensor,
)
from binsense.encoders.base import FloatEncoder
from binsense.errors import BinsenseError
from binsense.layers.binary import BinaryConv2d, BinaryLinear
from binsense.layers.block import BinaryBlock, Shortcut, shortcut
from binsense.layers.bn import QuantizedBatchNorm
from binsense.layers.design import DeSign, design_threshold_map
from binsense.layers.norm import ChannelAffine, channel_view
from binsense.layers.shape import GlobalPool as GlobalPoolModule
from binsense.layers.shape import global_pool
from binsense.quant.fixed import quantize_fixed_ste
from binsense.quant.sign import SignQuantizer, fused_sign_pm1

#: Norms on integer inputs up to this magnitude are checked on every integer.
MAX_ENUMERATION = 1 << 17

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


def _bn_forms(
    mean: Tensor, var: Tensor, weight: Tensor, bias: Tensor, eps: float
) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """``(a, b, fused)`` forms PyTorch's batch norm may compute (module docstring)."""
    eps_t = torch.tensor(eps, dtype=torch.float32)
    forms = []
    for invstd in (torch.rsqrt(var + eps_t), 1 / torch.sqrt(var + eps_t)):
        a = (invstd * weight).numpy()
        mean_n, bias_n = mean.numpy(), bias.numpy()
        b_fused = fma32(-mean_n, a, bias_n)
        b_plain = (bias_n - (mean_n * a).astype(np.float32)).astype(np.float32)
        forms += [(a, b_fused, True), (a, b_plain, False), (a, b_fused, False),
                  (a, b_plain, True)]  # fmt: skip
    return forms


@torch.no_grad()
def norm_affine(module: Any, forms: Sequence[tuple], probe: Tensor) -> Affine:
    """The affine form among ``forms`` that reproduces ``module`` (a callable) bit for bit
    on ``probe`` (``(N, C, ...)`` float32 inputs; module docstring); the closest form,
    with its mismatch count, when none does."""
    ref = module(probe.float()).numpy()
    x = probe.float().numpy()
    best: Affine | None = None
    for a, b, fused in forms:
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


# ---------------------------------------------------------------- the ops

#: Float op types by name (the file format's table): filled by :func:`_op`.
FLOAT_OPS: dict[str, type[FloatOp]] = {}


def _op(cls):
    """Register a float op class under its name (:data:`FLOAT_OPS`)."""
    FLOAT_OPS[cls.__name__] = cls
    return cls


@dataclass(frozen=True, eq=False)
class FloatOp(abc.ABC):
    """One float32 op of a float stage: :meth:`run` on ``(B, ...)`` float32 tensors.

    :meth:`spec` gives its plain parameters (JSON values) and tensors; ``from_spec``
    rebuilds it from them, every value checked (a file cannot make it allocate or index
    out of range)."""

    @abc.abstractmethod
    def run(self, x: Tensor) -> Tensor:
        """The op's output for ``x`` (``(B, ...)`` float32), the module's arithmetic."""

    def spec(self) -> tuple[dict, dict[str, Tensor]]:
        params: dict[str, Any] = {}
        tensors: dict[str, Tensor] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                tensors[f.name] = value
            elif isinstance(value, Affine):
                tensors["form_a"] = torch.from_numpy(value.a)
                tensors["form_b"] = torch.from_numpy(value.b)
                params["form"] = {"fused": value.fused, "mismatches": value.mismatches}
            elif value is not None:
                params[f.name] = list(value) if isinstance(value, tuple) else value
        return params, tensors

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> FloatOp:
        return cls()


def _vector(tensors: dict[str, Tensor], name: str, channels: int | None = None) -> Tensor:
    t = plain_tensor(tensors, name, torch.float32)
    if t.dim() != 1 or (channels is not None and t.numel() != channels):
        raise BinsenseError(f"tensor {name!r} must be a vector of {channels or 'C'} values.")
    return t


def _vectors(tensors: dict[str, Tensor], first: str, second: str) -> tuple[Tensor, Tensor]:
    """Two per-channel vectors of the same length."""
    a = _vector(tensors, first)
    return a, _vector(tensors, second, a.numel())


def _form(params: dict, tensors: dict[str, Tensor], channels: int) -> Affine:
    form = params.get("form")
    if not isinstance(form, dict):
        raise BinsenseError("a norm without its affine form.")
    a, b = _vector(tensors, "form_a", channels), _vector(tensors, "form_b", channels)
    return Affine(
        a.numpy().copy(), b.numpy().copy(), plain_flag(form.get("fused"), "fused"),
        plain_int(form.get("mismatches"), "mismatches", 0),
    )  # fmt: skip


@_op
@dataclass(frozen=True, eq=False)
class Standardize(FloatOp):
    """A float encoder: :math:`(x - \\mu_c) / \\sigma_c` per colour channel."""

    mean: Tensor
    std: Tensor

    def run(self, x: Tensor) -> Tensor:
        shape = (1, -1, 1, 1)
        return (x - self.mean.to(x.device).view(shape)) / self.std.to(x.device).view(shape)

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> Standardize:
        return cls(*_vectors(tensors, "mean", "std"))


@_op
@dataclass(frozen=True, eq=False)
class Conv(FloatOp):
    """A float conv in the fixed order (:func:`binsense.deploy.floatops.conv2d`).

    ``binary``: the weights are ±1 (a binary conv on a real input: the file stores them
    as bits); ``sign_input``: its input passes the sign first (:func:`sign_pm1`)."""

    weight: Tensor  # float32 (C_out, C_in / groups, k_h, k_w)
    bias: Tensor | None
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    binary: bool = False
    sign_input: bool = False

    def run(self, x: Tensor) -> Tensor:
        if self.sign_input:
            x = fused_sign_pm1(x)
        if x.is_meta:
            return F.conv2d(x, self.weight.to("meta"), None, self.stride, self.padding, 1,
                            self.groups)  # fmt: skip
        return floatops.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.groups)

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> Conv:
        weight = plain_tensor(tensors, "weight", torch.float32)
        if weight.dim() != 4:
            raise BinsenseError("a conv weight must be (C_out, C_in / groups, k_h, k_w).")
        stride = plain_pair(params.get("stride"), "stride", 1)
        padding = plain_pair(params.get("padding"), "padding", 0)
        check_geometry(tuple(weight.shape[2:]), padding, stride)
        groups = plain_int(params.get("groups"), "groups")
        if weight.shape[0] % groups:
            raise BinsenseError(f"{weight.shape[0]} output channels in {groups} groups.")
        bias = tensors.get("bias")
        if bias is not None:
            bias = _vector(tensors, "bias", weight.shape[0])
        binary = plain_flag(params.get("binary", False), "binary")
        if binary and not bool((weight.abs() == 1).all()):
            raise BinsenseError("a binary conv's weights must be ±1.")
        return cls(weight, bias, stride, padding, groups, binary,
                   plain_flag(params.get("sign_input", False), "sign_input"))  # fmt: skip


@_op
@dataclass(frozen=True, eq=False)
class Linear(FloatOp):
    """A float linear layer in the fixed order (:func:`binsense.deploy.floatops.linear`).

    ``pm1_input``: its input is ±1 (after a sign), so every product is exact and the
    fixed-order sum is the plain left-to-right one (the exports use it)."""

    weight: Tensor  # float32 (out, in)
    bias: Tensor | None
    binary: bool = False
    sign_input: bool = False
    pm1_input: bool = False

    def run(self, x: Tensor) -> Tensor:
        if self.sign_input:
            x = fused_sign_pm1(x)
        if x.is_meta:
            return F.linear(x, self.weight.to("meta"))
        return floatops.linear(x, self.weight, self.bias)

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> Linear:
        weight = plain_tensor(tensors, "weight", torch.float32)
        if weight.dim() != 2:
            raise BinsenseError("a linear weight must be (out, in).")
        bias = tensors.get("bias")
        if bias is not None:
            bias = _vector(tensors, "bias", weight.shape[0])
        binary = plain_flag(params.get("binary", False), "binary")
        if binary and not bool((weight.abs() == 1).all()):
            raise BinsenseError("a binary linear layer's weights must be ±1.")
        return cls(weight, bias, binary,
                   plain_flag(params.get("sign_input", False), "sign_input"),
                   plain_flag(params.get("pm1_input", False), "pm1_input"))  # fmt: skip


@_op
@dataclass(frozen=True, eq=False)
class BatchNorm(FloatOp):
    """A batch norm in eval mode, run as PyTorch runs it (``F.batch_norm`` on its running
    statistics); ``form``: its affine form for the exports, probed by :func:`lower`."""

    mean: Tensor
    var: Tensor
    weight: Tensor | None
    bias: Tensor | None
    eps: float
    form: Affine

    def run(self, x: Tensor) -> Tensor:
        mean, var, weight, bias = (
            None if t is None else t.to(x.device)
            for t in (self.mean, self.var, self.weight, self.bias)
        )
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> BatchNorm:
        mean = _vector(tensors, "mean")
        c = mean.numel()
        var = _vector(tensors, "var", c)
        if not bool((var >= 0).all()):
            raise BinsenseError("a batch norm's running variance must be >= 0.")
        weight = _vector(tensors, "weight", c) if "weight" in tensors else None
        bias = _vector(tensors, "bias", c) if "bias" in tensors else None
        eps = plain_float(params.get("eps"), "eps", positive=True)
        return cls(mean, var, weight, bias, eps, _form(params, tensors, c))


@_op
@dataclass(frozen=True, eq=False)
class ScaleShift(FloatOp):
    """``x * a + b`` per channel, a product then a sum (a channel affine norm, or a
    quantized batch norm's fixed-point ``a``, ``b``)."""

    a: Tensor
    b: Tensor

    def run(self, x: Tensor) -> Tensor:
        a, b = self.a.to(x.device), self.b.to(x.device)
        return x * channel_view(a, x) + channel_view(b, x)

    @property
    def form(self) -> Affine:
        """Its affine form (exact by definition)."""
        return Affine(self.a.numpy(), self.b.numpy(), False)

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> ScaleShift:
        return cls(*_vectors(tensors, "a", "b"))


@_op
@dataclass(frozen=True, eq=False)
class MaxPool(FloatOp):
    """``F.max_pool2d``."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    def run(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation,
                            self.ceil_mode)  # fmt: skip

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> MaxPool:
        kernel = plain_pair(params.get("kernel"), "kernel", 1)
        stride = plain_pair(params.get("stride"), "stride", 1)
        padding = plain_pair(params.get("padding"), "padding", 0)
        dilation = plain_pair(params.get("dilation"), "dilation", 1)
        check_geometry(kernel, padding, stride, dilation)
        return cls(kernel, stride, padding, dilation,
                   plain_flag(params.get("ceil_mode"), "ceil_mode"))  # fmt: skip


#: Largest output side of an adaptive pool read from a file.
MAX_POOL_OUTPUT = 1 << 12


@_op
@dataclass(frozen=True, eq=False)
class AdaptiveAvgPool(FloatOp):
    """``F.adaptive_avg_pool2d`` to ``output_size``."""

    output_size: tuple[int, int]

    def run(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, self.output_size)

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> AdaptiveAvgPool:
        size = plain_pair(params.get("output_size"), "output_size", 1)
        if max(size) > MAX_POOL_OUTPUT:
            raise BinsenseError(f"output_size {size} (at most {MAX_POOL_OUTPUT}).")
        return cls(size)


@_op
@dataclass(frozen=True, eq=False)
class GlobalPool(FloatOp):
    """The sum or the mean over all positions (:func:`binsense.layers.shape.global_pool`)."""

    mode: str

    def run(self, x: Tensor) -> Tensor:
        return global_pool(x, self.mode)

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> GlobalPool:
        return cls(plain_choice(params.get("mode"), "mode", ("sum", "mean")))


@_op
@dataclass(frozen=True, eq=False)
class Flatten(FloatOp):
    """``x.flatten(1)``."""

    def run(self, x: Tensor) -> Tensor:
        return x.flatten(1)


@_op
@dataclass(frozen=True, eq=False)
class ReLU(FloatOp):
    def run(self, x: Tensor) -> Tensor:
        return F.relu(x)


@_op
@dataclass(frozen=True, eq=False)
class Hardtanh(FloatOp):
    min_val: float = -1.0
    max_val: float = 1.0

    def run(self, x: Tensor) -> Tensor:
        return F.hardtanh(x, self.min_val, self.max_val)

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> Hardtanh:
        lo = plain_float(params.get("min_val"), "min_val")
        hi = plain_float(params.get("max_val"), "max_val")
        if lo > hi:
            raise BinsenseError(f"Hardtanh min_val {lo} above max_val {hi}.")
        return cls(lo, hi)


@_op
@dataclass(frozen=True, eq=False)
class Sign(FloatOp):
    """Every sign quantizer's forward: ``+1`` where ``x >= 0``, else ``-1`` (float)."""

    def run(self, x: Tensor) -> Tensor:
        return fused_sign_pm1(x)


@_op
@dataclass(frozen=True, eq=False)
class DeSignShift(FloatOp):
    r"""DeSign: :math:`x - g_c T[c \bmod F, i \bmod m, j \bmod n]`, then the sign when
    ``sign`` (:func:`binsense.layers.design.design_threshold_map`); ``scale`` :math:`g`:
    the coupled batch norm's :math:`\gamma` when it was trained coupled, else ``None``."""

    kernel: Tensor  # float32 (F, m, n)
    scale: Tensor | None
    sign: bool = True

    def run(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise BinsenseError(f"DeSign expects [B, C, H, W] input, got {x.dim()}-D.")
        _, c, h, w = x.shape
        t = design_threshold_map(self.kernel, self.scale, c, h, w)
        shifted = x - t.to(device=x.device, dtype=x.dtype)
        return fused_sign_pm1(shifted) if self.sign else shifted

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> DeSignShift:
        kernel = plain_tensor(tensors, "kernel", torch.float32)
        if kernel.dim() != 3 or not 1 <= min(kernel.shape) <= max(kernel.shape) <= 64:
            raise BinsenseError(f"a DeSign kernel of shape {tuple(kernel.shape)}: (F, m, n).")
        scale = _vector(tensors, "scale") if "scale" in tensors else None
        return cls(kernel, scale, plain_flag(params.get("sign"), "sign"))


@_op
@dataclass(frozen=True, eq=False)
class ShortcutOp(FloatOp):
    """A ResNet "option A" shortcut (:func:`binsense.layers.block.shortcut`)."""

    stride: int
    pad: int
    mode: str

    def run(self, x: Tensor) -> Tensor:
        return shortcut(x, self.stride, self.pad, self.mode)

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> ShortcutOp:
        return cls(
            plain_int(params.get("stride"), "stride", 1, 8),
            plain_int(params.get("pad"), "pad", 0, 1 << 16),
            plain_choice(params.get("mode"), "mode", ("avg_pool", "slice")),
        )


def run_ops(ops: Sequence[FloatOp], x: Tensor) -> Tensor:
    """The ops in order on ``x`` (the reference run of a float stage)."""
    for op in ops:
        x = op.run(x)
    return x


# ---------------------------------------------------------------- lowering


@dataclass
class Lowered:
    """The float ops of some trained modules, and the paths of the conv and linear layers
    they came from (``sources``: the trained layers to sum in the fixed order when the
    trained model is the reference, :func:`binsense.deploy.floatops.ordered`)."""

    ops: list[FloatOp]
    sources: list[str]
    #: Largest magnitude of the integers the last op gives (0: real values).
    bound: int


def lower(
    modules: Sequence[tuple[str, nn.Module]], bound: int = 0, *, channels: int | None = None
) -> Lowered:
    """The float ops of ``modules`` (``(path, module)`` pairs in forward order, as
    trained and in eval mode); ``bound``: the largest magnitude of the stage's input when
    it is an integer (a popcount: its fan-in; 0 for real values), which chooses each
    norm's probe (module docstring). A module type outside the table is one
    :class:`BinsenseError` line naming its path."""
    out = Lowered([], [], bound)
    for path, m in modules:
        _lower_one(path, m.eval(), out)
    return out


def _children(path: str, m: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, child in m.named_children():
        yield (f"{path}.{name}" if path else name), child


def _no_padding_string(path: str, m: nn.Conv2d) -> None:
    if m.padding_mode != "zeros" or isinstance(m.padding, str) or m.dilation != (1, 1):
        raise BinsenseError(
            f"{path}: a float conv deploys with numeric zero padding and dilation 1, got "
            f"padding {m.padding!r} ({m.padding_mode}), dilation {m.dilation}."
        )


def _binary_parts(path: str, m: BinaryConv2d | BinaryLinear) -> tuple[Tensor, bool, bool]:
    """``(weight, binary, sign_input)`` of a binary layer on a real input."""
    if m.scale:
        raise BinsenseError(
            f"{path}: a binary layer with an XNOR scale inside a float stage does not deploy."
        )
    for q in (m.weight_quantizer, m.input_quantizer):
        if q is not None and not isinstance(q, SignQuantizer):
            raise BinsenseError(f"{path}: a {type(q).__name__} quantizer does not deploy.")
    with torch.no_grad():
        w = m.binary_weight().detach().float().cpu()
    return w.contiguous(), m.weight_quantizer is not None, m.input_quantizer is not None


def _tensor(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().float().cpu().contiguous()


def _lower_one(path: str, m: nn.Module, out: Lowered) -> None:
    ops, bound = out.ops, out.bound
    if type(m) is nn.Sequential:
        for child in _children(path, m):
            _lower_one(*child, out)
        return
    if type(m) is BinaryBlock:
        for name in ("conv", "pool", "norm", "act"):
            child = getattr(m, name)
            if child is not None:
                _lower_one(f"{path}.{name}", child, out)
        return
    if type(m) is nn.Identity:
        return
    if type(m) is FloatEncoder:
        ops.append(Standardize(_tensor(m.mean).view(-1), _tensor(m.std).view(-1)))
        out.bound = 0
    elif type(m) in (nn.Conv2d, BinaryConv2d):
        _no_padding_string(path, m)
        weight, binary, sign_input = (
            _binary_parts(path, m) if type(m) is BinaryConv2d else (_tensor(m.weight), False, False)
        )
        ops.append(Conv(weight, _tensor(m.bias), tuple(m.stride), tuple(m.padding), m.groups,
                        binary, sign_input))  # fmt: skip
        out.sources.append(path)
        out.bound = 0
    elif type(m) in (nn.Linear, BinaryLinear):
        weight, binary, sign_input = (
            _binary_parts(path, m) if type(m) is BinaryLinear else (_tensor(m.weight), False, False)
        )
        pm1 = sign_input or bound == 1
        ops.append(Linear(weight, _tensor(m.bias), binary, sign_input, pm1))
        out.sources.append(path)
        out.bound = 0
    elif type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
        ops.append(_batch_norm(path, m, bound))
        out.bound = 0
    elif type(m) is QuantizedBatchNorm:
        _check_stats(path, m)
        with torch.no_grad():  # as its eval forward computes them
            a = (m.weight if m.affine else 1.0) / torch.sqrt(m.running_var + m.eps)
            b = (m.bias if m.affine else 0.0) - a * m.running_mean
            a_q, b_q = quantize_fixed_ste(a, m.bits), quantize_fixed_ste(b, m.bits)
        ops.append(ScaleShift(_tensor(a_q), _tensor(b_q)))
        out.bound = 0
    elif type(m) is ChannelAffine:
        ops.append(ScaleShift(_tensor(m.scale), _tensor(m.shift)))
        out.bound = 0
    elif type(m) is nn.MaxPool2d:
        if m.return_indices:
            raise BinsenseError(f"{path}: a max-pool returning indices does not deploy.")

        def pair(v):
            return tuple(v) if isinstance(v, tuple | list) else (v, v)

        stride = m.stride if m.stride is not None else m.kernel_size
        ops.append(MaxPool(pair(m.kernel_size), pair(stride), pair(m.padding),
                           pair(m.dilation), m.ceil_mode))  # fmt: skip
    elif type(m) is nn.AdaptiveAvgPool2d:
        size = m.output_size
        size = tuple(size) if isinstance(size, tuple | list) else (size, size)
        if None in size:
            raise BinsenseError(f"{path}: an adaptive pool keeping a side does not deploy.")
        ops.append(AdaptiveAvgPool(size))
        out.bound = 0
    elif type(m) is GlobalPoolModule:
        ops.append(GlobalPool(m.mode))
        # a sum of integers stays an integer, of unknown size here: probe them all
        out.bound = MAX_ENUMERATION if m.mode == "sum" and bound else 0
    elif type(m) is nn.Flatten:
        if m.start_dim != 1 or m.end_dim != -1:
            raise BinsenseError(f"{path}: only Flatten(1, -1) deploys.")
        ops.append(Flatten())
    elif type(m) is nn.ReLU:
        ops.append(ReLU())
    elif type(m) is nn.Hardtanh:
        ops.append(Hardtanh(float(m.min_val), float(m.max_val)))
        out.bound = 0
    elif isinstance(m, SignQuantizer):
        ops.append(Sign())
        out.bound = 1
    elif type(m) is DeSign:
        if m.quantizer is not None and not isinstance(m.quantizer, SignQuantizer):
            raise BinsenseError(
                f"{path}: a {type(m.quantizer).__name__} quantizer does not deploy."
            )
        scale = m.scale()
        ops.append(DeSignShift(_tensor(m.kernel), _tensor(scale), m.quantizer is not None))
        out.bound = 1 if m.quantizer is not None else 0
    elif type(m) is Shortcut:
        ops.append(ShortcutOp(m.stride, m.pad, m.mode))
    else:
        raise BinsenseError(
            f"{path or 'a float stage'}: a {type(m).__name__} module does not deploy (float "
            f"stages take: {', '.join(LOWERED_MODULES)})."
        )


#: The trained module types :func:`lower` knows (for messages).
LOWERED_MODULES = (
    "Sequential", "BinaryBlock", "Identity", "FloatEncoder", "Conv2d", "BinaryConv2d",
    "Linear", "BinaryLinear", "BatchNorm1d", "BatchNorm2d", "QuantizedBatchNorm",
    "ChannelAffine", "MaxPool2d", "AdaptiveAvgPool2d", "GlobalPool", "Flatten", "ReLU",
    "Hardtanh", "sign quantizers", "DeSign", "Shortcut",
)  # fmt: skip


def _check_stats(path: str, m: _BatchNorm) -> None:
    if not m.track_running_stats or m.running_mean is None or m.running_var is None:
        raise BinsenseError(f"{path}: a batch norm without running statistics does not deploy.")


def _batch_norm(path: str, m: _BatchNorm, bound: int) -> BatchNorm:
    _check_stats(path, m)
    mean, var = _tensor(m.running_mean), _tensor(m.running_var)
    weight, bias = _tensor(m.weight), _tensor(m.bias)
    c = mean.numel()
    forms = _bn_forms(
        mean, var, weight if weight is not None else torch.ones(c),
        bias if bias is not None else torch.zeros(c), m.eps,
    )  # fmt: skip
    spatial = type(m) is nn.BatchNorm2d
    if 0 < bound <= MAX_ENUMERATION:
        probe = integer_probe(-bound, bound, c, spatial)
    else:
        probe = float_probe(c, spatial)
    form = norm_affine(m, forms, probe)
    return BatchNorm(mean, var, weight, bias, float(m.eps), form)


__all__ = [
    "FLOAT_OPS",
    "LOWERED_MODULES",
    "MAX_ENUMERATION",
    "AdaptiveAvgPool",
    "Affine",
    "BatchNorm",
    "Conv",
    "DeSignShift",
    "Flatten",
    "FloatOp",
    "GlobalPool",
    "Hardtanh",
    "Linear",
    "Lowered",
    "MaxPool",
    "ReLU",
    "ScaleShift",
    "ShortcutOp",
    "Sign",
    "Standardize",
    "float_probe",
    "fma32",
    "integer_probe",
    "lower",
    "norm_affine",
    "run_ops",
]
