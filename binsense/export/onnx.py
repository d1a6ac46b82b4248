r"""A deployed BNN as a standard ONNX graph that gives the PyTorch model's predictions.

``export_onnx(deployed, "model.onnx", input_shape=(3, 32, 32))`` writes a graph with one
input ``image``, float32 ``(N, C, H, W)`` in [0, 1] (pixel / 255, what the PyTorch model
reads), and two outputs: ``logits`` float32 ``(N, classes)`` and ``prediction`` int64
``(N,)`` (the first largest logit, as ``argmax``). It runs in onnxruntime (opset 18).

**Why it is exact.** Standard ONNX has no popcount, so the binary layers run as float
ops, which is exact here: a binary conv on ±1 inputs with ±1 weights and *zero padding
exactly as PyTorch pads* gives integers :math:`|y| \le K` (the fan-in), and float32 holds
every integer below :math:`2^{24}` exactly, whatever the summation order. Then

- binarisation is ``Where(x >= 0, 1, -1)`` (0 maps to +1; ONNX ``Sign(0) = 0`` is never
  used);
- a folded (norm, sign) pair is the deployed integer threshold, compared exactly:
  :math:`+1` iff :math:`f\,y \ge f\,\tau` with :math:`f = \pm 1` (DeSign thresholds per
  position class are tiled over the map in the graph: ``Tile`` then ``Slice``);
- max-pools, flattening and channel shuffles move integers;
- a binary encoder is its exact code table: ``Clip(Round(255 x), 0, 255)`` (round half
  to even, as :func:`binsense.encoders.base.adc_code`) indexes the ±1 planes (``Gather``).

The float parts are the trained model's float32 modules: a float encoder and first
layer, a head norm, a float classifier. A norm is written in the arithmetic PyTorch uses
(:func:`binsense.export.common.norm_affine`, checked bit for bit on every integer it can
see, or on a probe). The float convs and a float classifier on ±1 inputs follow the one
summation order of :mod:`binsense.deploy.floatops`, the engine's at every batch size:
a conv is the chain of exact fused multiply-adds (``Slice`` of each tap, kernel row,
column, then channel; :meth:`GraphBuilder.fma`, float64 with the halfway case mended),
the bias last; a classifier is its products summed left to right by ``CumSum``
(onnxruntime's ``Gemm`` sums in blocks of K, another order once K > 128). The graph gives
the engine's logits bit for bit at any batch (tests: every family, batch 1 and 32).

**Size.** Binary weights are stored as bits: a ``uint8`` initializer, 8 weights a byte,
unpacked in the graph by ``BitShift`` and ``BitwiseAnd`` (constant-folded by
onnxruntime when the session starts). Thresholds are ``int16``/``int32``, cast in the
graph. The float parts stay float32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from binsense.deploy import ir
from binsense.deploy.program import DeployedModel
from binsense.encoders.base import ADC_MAX, FloatEncoder
from binsense.errors import BinsenseError
from binsense.export.common import (
    FLOAT_EXACT,
    MAX_ENUMERATION,
    Affine,
    float_probe,
    integer_probe,
    no_residual,
    norm_affine,
    op_shapes,
    pack_bits_u8,
    pm1_weight,
    threshold_arrays,
)
from binsense.io import atomic_write
from binsense.layers.binary import BinaryConv2d, BinaryLinear, is_binary_layer
from binsense.layers.block import BinaryBlock
from binsense.layers.design import DeSign
from binsense.layers.norm import ChannelAffine
from binsense.layers.shape import ChannelShuffle, GlobalPool
from binsense.quant.sign import SignQuantizer

#: The standard opset the graphs use (``BitwiseAnd`` needs 18).
OPSET = 18
INSTALL_HINT = 'ONNX export needs the export extra: pip install -e ".[export]" (onnx, onnxruntime).'


def require_onnx() -> Any:
    """The ``onnx`` module, or one :class:`BinsenseError` line saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise BinsenseError(INSTALL_HINT) from None
    return onnx


@dataclass
class ExportInfo:
    """What an export wrote: file size, the bits it holds, float disagreement checks.

    ``binary_weights`` has one definition in every export (ONNX, QONNX, C) and in
    ``binsense summary`` (its 1-bit parameters, :mod:`binsense.compress.summary`): the ±1
    weights of the binary layers (:func:`binsense.layers.binary.is_binary_layer`), a
    binary-weight first conv on real pixels included. A binary encoder's ±1 code table is
    no weight: ``code_table_entries`` counts it (standard ONNX only; QONNX writes the
    encoder as thresholds).
    """

    path: str
    file_bytes: int
    binary_weights: int
    float_params: int
    threshold_values: int
    float_mismatches: int = 0
    notes: list[str] = field(default_factory=list)
    code_table_entries: int = 0

    def line(self) -> str:
        bits = self.binary_weights
        table = (
            f", and a ±1 encoder code table of {self.code_table_entries:,} entries"
            if self.code_table_entries
            else ""
        )
        return (
            f"wrote {self.path}: {self.file_bytes:,} bytes for {bits:,} binary weights "
            f"({bits / 8:,.0f} bytes as bits), {self.float_params:,} float parameters "
            f"and {self.threshold_values:,} integer thresholds{table}"
        )


class GraphBuilder:
    """Builds the ONNX graph of a deployed model, op by op (standard flavour).

    :class:`binsense.export.qonnx.QonnxBuilder` overrides :meth:`sign`,
    :meth:`binary_weight`, :meth:`threshold` and :meth:`planes`.
    """

    flavour = "ONNX"
    #: The batch dimension of the input and outputs (a name: any batch size).
    batch: str | int = "N"
    #: Write the float convs and a float head on ±1 inputs in the one order of
    #: :mod:`binsense.deploy.floatops` (else one ``Conv`` / ``Gemm``).
    exact_float = True

    def __init__(self) -> None:
        self.onnx = require_onnx()
        from onnx import helper

        self.helper = helper
        self.nodes: list = []
        self.inits: list = []
        self.names: set[str] = set()
        self.binary_weights = 0  # weights of binary layers only (ExportInfo)
        self.code_table_entries = 0  # a binary encoder's ±1 code table (not weights)
        self.float_params = 0
        self.threshold_values = 0
        self.float_mismatches = 0
        self.opsets = {"": OPSET}
        self.casts: dict[str, str] = {}  # float64 casts and constants, shared

    # ---------------------------------------------------------------- basics
    def name(self, base: str) -> str:
        base = base.replace(".", "_")
        n, i = base, 1
        while n in self.names:
            n, i = f"{base}_{i}", i + 1
        self.names.add(n)
        return n

    def const(
        self, base: str, value: np.ndarray | float | int | Sequence, double: bool = False
    ) -> str:
        """An initializer (numpy dtype kept; floats as float32 unless ``double``; Python
        ints as int64)."""
        from onnx import numpy_helper

        arr = np.asarray(value)
        if arr.dtype == np.float64 and not double:
            arr = arr.astype(np.float32)
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, inputs: Sequence[str], base: str = "", domain: str = "",
             **attrs: Any) -> str:  # fmt: skip
        out = self.name(base or op.lower())
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], domain=domain or None,
                                                **attrs))  # fmt: skip
        return out

    def float_const(self, base: str, value: np.ndarray) -> str:
        self.float_params += int(np.asarray(value).size)
        return self.const(base, np.asarray(value, dtype=np.float32))

    def int_const(self, base: str, value: np.ndarray) -> str:
        """Integers stored in the smallest of int8/16/32 that holds them, cast to float32."""
        value = np.asarray(value, dtype=np.int64)
        for dtype in (np.int8, np.int16, np.int32):
            info = np.iinfo(dtype)
            if value.size == 0 or (value.min() >= info.min and value.max() <= info.max):
                break
        stored = self.const(base, value.astype(dtype))
        return self.node("Cast", [stored], f"{base}_f", to=self.onnx.TensorProto.FLOAT)

    # ---------------------------------------------------------------- flavour hooks
    def sign(self, x: str, base: str = "sign") -> str:
        """±1 float with sign(0) = +1: ``Where(x >= 0, 1, -1)``."""
        zero = self.const(f"{base}_zero", np.float32(0))
        cond = self.node("GreaterOrEqual", [x, zero], f"{base}_ge")
        return self.node("Where", [cond, self.one(), self.minus_one()], base)

    def one(self) -> str:
        if "one" not in self.names:
            self.const("one", np.float32(1))
        return "one"

    def minus_one(self) -> str:
        if "minus_one" not in self.names:
            self.const("minus_one", np.float32(-1))
        return "minus_one"

    def binary_weight(self, base: str, pm1: np.ndarray) -> str:
        """The ±1 weights ``pm1`` of a binary layer (counted in ``binary_weights``) as
        :meth:`bit_tensor`."""
        self.binary_weights += int(pm1.size)
        return self.bit_tensor(base, pm1)

    def bit_tensor(self, base: str, pm1: np.ndarray) -> str:
        """A float32 ±1 tensor of ``pm1``'s shape, stored as bits and unpacked in the graph:
        ``bit = (byte >> [0..7]) & 1``, ``w = 2 bit - 1``."""
        packed = self.const(f"{base}_bits", pack_bits_u8(pm1 > 0))
        if "bit_shifts" not in self.names:
            self.const("bit_shifts", np.arange(8, dtype=np.uint8).reshape(1, 8))
            self.const("bit_one", np.array(1, dtype=np.uint8))
        column = self.node("Unsqueeze", [packed, self.const(f"{base}_ax", np.array([1]))],
                           f"{base}_col")  # fmt: skip
        shifted = self.node("BitShift", [column, "bit_shifts"], f"{base}_shift",
                            direction="RIGHT")  # fmt: skip
        bits = self.node("BitwiseAnd", [shifted, "bit_one"], f"{base}_and")
        flat = self.node("Reshape", [bits, self.const(f"{base}_flat", np.array([-1]))])
        start, end = (
            self.const(f"{base}_s", np.array([0])),
            self.const(f"{base}_e", np.array([pm1.size])),
        )
        valid = self.node("Slice", [flat, start, end], f"{base}_valid")
        as_float = self.node("Cast", [valid], f"{base}_float", to=self.onnx.TensorProto.FLOAT)
        two = self.node("Mul", [as_float, self.const(f"{base}_two", np.float32(2))])
        pm = self.node("Sub", [two, self.one()], f"{base}_pm1")
        shape = self.const(f"{base}_shape", np.array(pm1.shape, dtype=np.int64))
        return self.node("Reshape", [pm, shape], f"{base}_w")

    def threshold(self, y: str, th: ir.Threshold, shape: tuple, base: str) -> str:
        """±1 of the deployed threshold: ``+1`` iff ``flip * y >= flip * tau``."""
        tau, flip = threshold_arrays(th, shape)
        self.threshold_values += int(tau.size)
        signed = self.broadcast(f"{base}_ftau", flip * tau, shape)
        direction = self.broadcast(f"{base}_flip", flip, shape)
        fy = self.node("Mul", [y, direction], f"{base}_fy")
        cond = self.node("GreaterOrEqual", [fy, signed], f"{base}_ge")
        return self.node("Where", [cond, self.one(), self.minus_one()], base)

    def broadcast(self, base: str, values: np.ndarray, shape: tuple) -> str:
        """Per-channel ``(C,)`` or per-position-class ``(C, m, n)`` integers as a float
        tensor broadcasting over a ``(N, *shape)`` output (classes tiled from the top-left
        corner: ``Tile``, then ``Slice`` to ``H x W``)."""
        t = self.int_const(base, values if values.ndim != 1 else values.reshape(
            -1, *([1] * (len(shape) - 1))))  # fmt: skip
        if values.ndim == 1:
            return t
        _, m, n = values.shape
        h, w = shape[1], shape[2]
        reps = self.const(f"{base}_reps", np.array([1, -(-h // m), -(-w // n)]))
        tiles = self.node("Tile", [t, reps], f"{base}_tiled")
        start = self.const(f"{base}_s", np.array([0, 0]))
        end = self.const(f"{base}_e", np.array([h, w]))
        axes = self.const(f"{base}_axes", np.array([1, 2]))
        return self.node("Slice", [tiles, start, end, axes], f"{base}_map")

    def planes(self, x: str, op: ir.PlanesInput, shape: tuple) -> str:
        """A binary encoder: ``codes = Clip(Round(255 x), 0, 255)``, then a ``Gather`` of
        the ±1 code table (channel ``c``'s row ``256 c + code``), planes channel-major."""
        codes = self.adc_codes(x)
        table = op.table.cpu().numpy()  # (C, 256, K) bool
        c, _, k = table.shape
        offsets = self.const("code_offsets", (np.arange(c) * 256).reshape(1, c, 1, 1))
        index = self.node("Add", [codes, offsets], "code_index")
        self.code_table_entries += int(table.size)  # not binary weights (ExportInfo)
        pm = self.bit_tensor("code_table", np.where(table, 1, -1).reshape(c * 256, k))
        gathered = self.node("Gather", [pm, index], "planes_nchwk", axis=0)  # N,C,H,W,K
        moved = self.node("Transpose", [gathered], "planes_nckhw", perm=[0, 1, 4, 2, 3])
        out_shape = self.const("planes_shape", np.array([-1, c * k, *shape[1:]]))
        return self.node("Reshape", [moved, out_shape], "planes")

    def adc_codes(self, x: str) -> str:
        """int64 ADC codes of a [0, 1] image (:func:`binsense.encoders.base.adc_code`)."""
        scaled = self.node("Mul", [x, self.const("adc_scale", np.float32(ADC_MAX))], "adc_x")
        rounded = self.node("Round", [scaled], "adc_round")
        lo, hi = self.const("adc_lo", np.float32(0)), self.const("adc_hi", np.float32(ADC_MAX))
        clipped = self.node("Clip", [rounded, lo, hi], "adc_clip")
        return self.node("Cast", [clipped], "adc_code", to=self.onnx.TensorProto.INT64)

    # ---------------------------------------------------------------- ops
    def affine(self, x: str, form: Affine, rank: int, base: str) -> str:
        """``a x + b`` per channel in the norm's arithmetic (one rounding when fused)."""
        shape = (1, -1, *([1] * (rank - 2)))
        a = self.float_const(f"{base}_a", form.a.reshape(shape))
        b = self.float_const(f"{base}_b", form.b.reshape(shape))
        if not form.fused:
            return self.node("Add", [self.node("Mul", [x, a], f"{base}_ax"), b], base)
        return self.fma(self.f64(x), self.f64(a), b, base)

    def module(self, x: str, m: nn.Module, shape: tuple, base: str, integer_in: int) -> str:
        """One float-stage module (children in order for containers). ``integer_in``:
        the largest magnitude of integer inputs (0 for real-valued inputs): norms on
        integers are checked on every integer."""
        for name, child in _children(m, base):
            with torch.no_grad():
                out_shape = tuple(child.eval()(torch.zeros(2, *shape)).shape[1:])
            x, integer_in = self._leaf(x, child, shape, name, integer_in)
            shape = out_shape
        return x

    def f64(self, x: str) -> str:
        """``x`` cast to float64 (one ``Cast`` per tensor, shared)."""
        if x not in self.casts:
            self.casts[x] = self.node("Cast", [x], to=self.onnx.TensorProto.DOUBLE)
        return self.casts[x]

    def shared(self, base: str, value: float) -> str:
        """A float64 scalar constant, one per graph."""
        if base not in self.casts:
            self.casts[base] = self.const(base, np.float64(value), double=True)
        return self.casts[base]

    def fma(self, x64: str, a64: str, b: str, base: str) -> str:
        """``x * a + b`` rounded once to float32 (``x64``, ``a64``: float32 values held as
        float64; ``b`` float32; broadcast): the exact emulation of
        :func:`binsense.deploy.floatops.fma` in graph nodes (float64 product and sum,
        TwoSum error, the halfway case mended)."""
        tp = self.onnx.TensorProto
        b64 = self.f64(b)
        p = self.node("Mul", [x64, a64])
        s = self.node("Add", [p, b64])
        t = self.node("Sub", [s, p])
        err = self.node("Add", [self.node("Sub", [p, self.node("Sub", [s, t])]),
                                self.node("Sub", [b64, t])])  # fmt: skip
        near = self.node("Cast", [s], to=tp.FLOAT)
        d = self.node("Sub", [s, self.f64(near)])
        two, zero = self.shared("fma_two", 2.0), self.shared("fma_zero", 0.0)
        other = self.node("Add", [self.f64(near), self.node("Mul", [d, two])])
        other32 = self.node("Cast", [other], to=tp.FLOAT)
        halfway = self.node("And", [
            self.node("And", [self.node("Not", [self.node("Equal", [d, zero])]),
                              self.node("Equal", [self.f64(other32), other])]),
            self.node("Not", [self.node("Equal", [err, zero])])])  # fmt: skip
        up = self.node("Max", [near, other32])
        down = self.node("Min", [near, other32])
        side = self.node("Where", [self.node("Greater", [err, zero]), up, down])
        return self.node("Where", [halfway, side, near], base)

    def fma_conv(self, x: str, conv: nn.Conv2d, shape: tuple, base: str) -> str:
        """A float conv in the one order of :mod:`binsense.deploy.floatops`: per group,
        ``Slice`` each tap (kernel row, column, then channel) and chain exact FMAs from +0
        (zero padding: a padded tap adds an exact 0), the bias added last."""
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        c_in, h, w = shape
        g = conv.groups
        cg, og = c_in // g, conv.out_channels // g
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if getattr(conv, "input_quantizer", None) is not None:
            x = self.sign(x, f"{base}_in")
        if ph or pw:
            pads = self.const(f"{base}_pads", np.array([0, 0, ph, pw, 0, 0, ph, pw]))
            x = self.node("Pad", [x, pads], f"{base}_padded")
        with torch.no_grad():
            weight = getattr(conv, "binary_weight", lambda: conv.weight)()
        weight = weight.detach().float().cpu().numpy()
        self._count_weights(conv, int(weight.size))
        axes = self.const(f"{base}_axes", np.array([1, 2, 3]))
        steps = self.const(f"{base}_steps", np.array([1, sh, sw]))
        x64 = self.f64(x)
        groups = []
        for gi in range(g):
            acc = self.const(f"{base}_g{gi}_zero", np.float32(0.0))
            rows = slice(gi * og, (gi + 1) * og)
            for i in range(kh):
                for j in range(kw):
                    for c in range(cg):
                        ch = gi * cg + c
                        t = f"{base}_{ch}_{i}_{j}"
                        start = self.const("start", np.array([ch, i, j]))
                        stop = [ch + 1, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1]
                        end = self.const("end", np.array(stop))
                        tap = self.node("Slice", [x64, start, end, axes, steps])
                        wt = weight[rows, c, i, j].reshape(1, -1, 1, 1).astype(np.float64)
                        acc = self.fma(tap, self.const(f"{t}_w", wt, double=True), acc, t)
            groups.append(acc)
        acc = groups[0] if g == 1 else self.node("Concat", groups, f"{base}_groups", axis=1)
        if conv.bias is not None:
            bias = self.float_const(
                f"{base}_bias", conv.bias.detach().cpu().numpy().reshape(1, -1, 1, 1)
            )
            acc = self.node("Add", [acc, bias], base)
        return acc

    def ordered_linear(self, x: str, m: nn.Linear, base: str) -> str:
        """A float linear layer on ±1 inputs in the one order of
        :mod:`binsense.deploy.floatops`: the products (exact: ±w) summed left to right by
        ``CumSum`` (sequential in onnxruntime; its ``Gemm`` sums in blocks of K), the last
        partial sum taken, the bias added last."""
        with torch.no_grad():
            weight = getattr(m, "binary_weight", lambda: m.weight)()
        weight = weight.detach().float().cpu().numpy()
        self._count_weights(m, int(weight.size))
        k = weight.shape[1]
        xu = self.node("Unsqueeze", [x, self.const(f"{base}_ax1", np.array([1]))], f"{base}_x")
        products = self.node("Mul", [xu, self.const(f"{base}_w", weight)], f"{base}_products")
        sums = self.node("CumSum", [products, self.const(f"{base}_axis", np.array(-1))])
        last = self.node("Gather", [sums, self.const(f"{base}_last", np.array([k - 1]))],
                         f"{base}_last_sum", axis=2)  # fmt: skip
        y = self.node("Squeeze", [last, self.const(f"{base}_ax2", np.array([2]))], f"{base}_sum")
        if m.bias is not None:
            y = self.node(
                "Add", [y, self.float_const(f"{base}_bias", m.bias.detach().numpy())], base
            )
        return y

    def _layer_inputs(self, x: str, m: nn.Module, base: str) -> list[str]:
        """A conv's or linear layer's inputs: ``x`` (through its input sign, if any), its
        weights (binary: stored as bits; float: float32) and its bias."""
        inputs = [x]
        if isinstance(m, BinaryConv2d | BinaryLinear):
            if m.input_quantizer is not None:
                inputs = [self.sign(x, f"{base}_in")]
            with torch.no_grad():
                w = m.binary_weight().detach().cpu().numpy()
            inputs.append(self._weight(base, w))
        else:
            inputs.append(self.float_const(f"{base}_w", m.weight.detach().cpu().numpy()))
        if m.bias is not None:
            inputs.append(self.float_const(f"{base}_bias", m.bias.detach().cpu().numpy()))
        return inputs

    def _leaf(self, x: str, m: nn.Module, shape: tuple, base: str,
              integer_in: int) -> tuple[str, int]:  # fmt: skip
        if isinstance(m, FloatEncoder):
            mean = self.float_const(f"{base}_mean", m.mean.cpu().numpy())
            std = self.float_const(f"{base}_std", m.std.cpu().numpy())
            return self.node("Div", [self.node("Sub", [x, mean]), std], base), 0
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise BinsenseError(f"{base}: the export needs a conv with numeric zero padding.")
            if self.exact_float and m.dilation == (1, 1):
                return self.fma_conv(x, m, shape, base), 0
            attrs = {"kernel_shape": list(m.kernel_size), "strides": list(m.stride),
                     "pads": [*m.padding, *m.padding], "dilations": list(m.dilation),
                     "group": m.groups}  # fmt: skip
            return self.node("Conv", self._layer_inputs(x, m, base), base, **attrs), 0
        if isinstance(m, nn.Linear):
            if self.exact_float and integer_in == 1 and getattr(m, "input_quantizer", None) is None:
                return self.ordered_linear(x, m, base), 0
            return self.node("Gemm", self._layer_inputs(x, m, base), base, transB=1), 0
        if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.Identity | ChannelAffine):
            channels = shape[0]
            spatial = len(shape) == 3
            if integer_in and integer_in <= MAX_ENUMERATION:
                probe = integer_probe(-integer_in, integer_in, channels, spatial)
            else:
                probe = float_probe(channels, spatial)
            form = norm_affine(m, channels, probe)
            self.float_mismatches += form.mismatches
            return self.affine(x, form, len(shape) + 1, base), 0
        if isinstance(m, nn.MaxPool2d):
            return self._maxpool(x, m, base), integer_in
        if isinstance(m, nn.AdaptiveAvgPool2d):
            if m.output_size not in (1, (1, 1)):
                raise BinsenseError(f"{base}: only a global adaptive average pool exports.")
            return self.node("GlobalAveragePool", [x], base), 0
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise BinsenseError(f"{base}: only Flatten(1, -1) exports.")
            return self.node("Flatten", [x], base, axis=1), integer_in
        if isinstance(m, nn.ReLU):
            return self.node("Relu", [x], base), integer_in
        if isinstance(m, nn.Hardtanh):
            lo = self.const(f"{base}_lo", np.float32(m.min_val))
            hi = self.const(f"{base}_hi", np.float32(m.max_val))
            return self.node("Clip", [x, lo, hi], base), 0
        if isinstance(m, SignQuantizer):
            return self.sign(x, base), 1
        if isinstance(m, DeSign):
            with torch.no_grad():
                t = m.thresholds(*shape).detach().float().cpu().numpy()
            shifted = self.node("Sub", [x, self.float_const(f"{base}_t", t)], f"{base}_shift")
            if m.quantizer is None:
                return shifted, 0
            return self.sign(shifted, base), 1
        if isinstance(m, GlobalPool):
            axes = self.const(f"{base}_axes", np.array([2, 3]))
            op = "ReduceSum" if m.mode == "sum" else "ReduceMean"
            if op == "ReduceSum":
                return (
                    self.node(op, [x, axes], base, keepdims=0),
                    integer_in * int(np.prod(shape[1:])),
                )
            return self.node(op, [x], base, axes=[2, 3], keepdims=0), 0
        raise BinsenseError(f"{base}: a {type(m).__name__} module does not export to ONNX.")

    def binary_conv(self, x: str, op: ir.PackedConv, name: str) -> str:
        """A packed conv as one ``Conv`` on ±1 values (every output an integer, exact in
        float32 whatever the summation order)."""
        w = self.binary_weight(name, pm1_weight(op))
        return self.node("Conv", [x, w], name, group=op.groups, **conv_attrs(op))

    def _count_weights(self, m: nn.Module, n: int) -> None:
        """``n`` weights of ``m`` written as float taps (:meth:`fma_conv`,
        :meth:`ordered_linear`): binary weights if ``m`` is a binary layer
        (:class:`ExportInfo`'s one definition), else float parameters."""
        if is_binary_layer(m):
            self.binary_weights += n
        else:
            self.float_params += n

    def _weight(self, base: str, w: np.ndarray) -> str:
        if not np.all(np.abs(w) == 1):
            raise BinsenseError(f"{base}: binary weights must be ±1.")
        return self.binary_weight(base, w.astype(np.int8))

    def _maxpool(self, x: str, pool: nn.MaxPool2d, base: str) -> str:
        def pair(v):
            return list(v) if isinstance(v, tuple) else [v, v]

        stride = pool.stride if pool.stride is not None else pool.kernel_size
        pads = pair(pool.padding)
        return self.node(
            "MaxPool", [x], base, kernel_shape=pair(pool.kernel_size), strides=pair(stride),
            pads=pads + pads, dilations=pair(pool.dilation), ceil_mode=int(pool.ceil_mode),
        )  # fmt: skip

    def channel_shuffle(self, x: str, groups: int, shape: tuple, base: str) -> str:
        c = shape[0]
        split = self.const(f"{base}_split", np.array([-1, groups, c // groups, *shape[1:]]))
        merged = self.const(f"{base}_merge", np.array([-1, *shape]))
        view = self.node("Reshape", [x, split], f"{base}_view")
        swapped = self.node("Transpose", [view], f"{base}_t", perm=[0, 2, 1, 3, 4])
        return self.node("Reshape", [swapped, merged], base)

    # ---------------------------------------------------------------- the program
    def program(self, deployed: DeployedModel, input_shape: tuple[int, int, int]) -> Any:
        """The ONNX model of ``deployed`` for images ``input_shape``."""
        helper, tp = self.helper, self.onnx.TensorProto
        no_residual(deployed, self.flavour)
        shapes = op_shapes(deployed, input_shape)
        x, shape, integer_in = "image", tuple(input_shape), 0
        for (name, op), out_shape in zip(deployed.ops.named_children(), shapes, strict=True):
            if isinstance(op, ir.PlanesInput):
                x, integer_in = self.planes(x, op, out_shape), 1
            elif isinstance(op, ir.FloatStage):
                x = self.module(x, op.body, shape, name, integer_in)
                integer_in = 0
            elif isinstance(op, ir.ToInt8):
                pass
            elif isinstance(op, ir.PackedConv):
                if op.fan_in >= FLOAT_EXACT:
                    raise BinsenseError(f"{name}: fan-in {op.fan_in} is too large for float32.")
                x = self.binary_conv(x, op, name)
                integer_in = op.fan_in
            elif isinstance(op, ir.PackedLinear):
                w = self.binary_weight(name, np.ascontiguousarray(pm1_weight(op).T))
                x = self.node("MatMul", [x, w], name)
                integer_in = op.fan_in
            elif isinstance(op, ir.MaxPoolInt):
                x = self._maxpool(x, op.pool, name)
            elif isinstance(op, ir.Threshold):
                x = self.threshold(x, op, out_shape, name)
                integer_in = 1
            elif isinstance(op, ir.FlattenOp):
                x = self.node("Flatten", [x], name, axis=1)
            elif isinstance(op, ChannelShuffle):
                x = self.channel_shuffle(x, op.groups, shape, name)
            else:
                raise BinsenseError(f"op {name} ({type(op).__name__}) does not export.")
            shape = out_shape
        if len(shape) != 1:
            raise BinsenseError(f"the program ends in shape {shape}, not (classes,).")
        logits = self.node("Identity", [x], "logits")
        pred = self.node("ArgMax", [logits], "prediction", axis=1, keepdims=0)
        graph = helper.make_graph(
            self.nodes, "binsense_bnn",
            [helper.make_tensor_value_info("image", tp.FLOAT, [self.batch, *input_shape])],
            [helper.make_tensor_value_info(logits, tp.FLOAT, [self.batch, shape[0]]),
             helper.make_tensor_value_info(pred, tp.INT64, [self.batch])],
            self.inits,
        )  # fmt: skip
        opsets = [helper.make_opsetid(d, v) for d, v in self.opsets.items()]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="binsense")
        model.ir_version = 8
        return model


def _children(m: nn.Module, base: str) -> list[tuple[str, nn.Module]]:
    """The leaves of a float stage's module tree, with their graph names, in order."""
    if isinstance(m, nn.Sequential | BinaryBlock):
        return [
            leaf
            for name, child in m.named_children()
            for leaf in _children(child, f"{base}_{name}")
        ]
    return [(base, m)]


def conv_attrs(op: ir.PackedConv) -> dict[str, list[int]]:
    """A packed conv's ``Conv`` attributes, ``group`` aside."""
    return {"strides": list(op.stride), "pads": [*op.padding, *op.padding],
            "kernel_shape": list(op.kernel)}  # fmt: skip


def write_model(model: Any, path: str | os.PathLike, builder: GraphBuilder) -> ExportInfo:
    """Check ``model`` and write it atomically; the :class:`ExportInfo` of the file."""
    onnx = require_onnx()
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    written = atomic_write(path, lambda f: f.write(data))
    return ExportInfo(
        str(written), len(data), builder.binary_weights, builder.float_params,
        builder.threshold_values, builder.float_mismatches,
        code_table_entries=builder.code_table_entries,
    )  # fmt: skip


def build_onnx(
    deployed: DeployedModel, input_shape: tuple[int, int, int]
) -> tuple[Any, GraphBuilder]:
    """The standard ONNX model of ``deployed`` (not written) and its builder."""
    builder = GraphBuilder()
    return builder.program(deployed, tuple(input_shape)), builder


def export_onnx(
    deployed: DeployedModel, path: str | os.PathLike, input_shape: tuple[int, int, int]
) -> ExportInfo:
    """Write ``deployed`` as a standard ONNX file (module docstring) for images of
    ``input_shape`` ``(C, H, W)``."""
    model, builder = build_onnx(deployed, input_shape)
    return write_model(model, path, builder)


def run_onnx(path_or_model: Any, images: np.ndarray, threads: int = 1) -> np.ndarray:
    """Logits of a standard ONNX export in onnxruntime for float32 images in [0, 1]."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BinsenseError(INSTALL_HINT) from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    source = path_or_model if isinstance(path_or_model, str | os.PathLike) else (
        path_or_model.SerializeToString())  # fmt: skip
    session = ort.InferenceSession(
        str(source) if isinstance(source, os.PathLike) else source, opts,
        providers=["CPUExecutionProvider"],
    )  # fmt: skip
    return session.run(["logits"], {"image": np.ascontiguousarray(images, dtype=np.float32)})[0]


__all__ = [
    "INSTALL_HINT",
    "OPSET",
    "ExportInfo",
    "GraphBuilder",
    "build_onnx",
    "export_onnx",
    "require_onnx",
    "run_onnx",
    "write_model",
]
