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

The float parts are the program's float stages, typed float32 ops
(:mod:`binsense.deploy.stage`: a float encoder and first layer, a head norm, a float
classifier), each written by its handler (:attr:`GraphBuilder.FLOAT_OPS`, one per op
type). A norm is written in the arithmetic PyTorch uses: the affine form the op records
(:func:`binsense.deploy.stage.norm_affine`, probed once when the program is built,
checked bit for bit on every integer it can see, or on a probe). The float convs and a
float classifier on ±1 inputs (its op's ``pm1_input``, without an input sign of its own)
follow the one summation order of :mod:`binsense.deploy.floatops`, the engine's at every
batch size: a conv is the chain of exact fused multiply-adds (``Slice`` of each tap,
kernel row, column, then channel; :meth:`GraphBuilder.fma`, float64 with the halfway case
mended), the bias last; a classifier is its products summed left to right by ``CumSum``
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
from typing import Any, ClassVar

import numpy as np
import torch

from binsense.deploy import ir, stage
from binsense.deploy.program import DeployedModel
from binsense.deploy.stage import Affine
from binsense.encoders.base import ADC_MAX
from binsense.errors import BinsenseError
from binsense.export.common import (
    FLOAT_EXACT,
    no_residual,
    op_shapes,
    pack_bits_u8,
    pm1_weight,
    threshold_arrays,
)
from binsense.io import atomic_write
from binsense.layers.design import design_threshold_map

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

    Each program op (:mod:`binsense.deploy.ir`) and each typed float op of a float stage
    (:mod:`binsense.deploy.stage`) is written by the method its type names in
    :attr:`PROGRAM_OPS` / :attr:`FLOAT_OPS` (a table per op type, as Larq Compute Engine
    and Brevitas map layer types to converters), from the op's plain fields.
    :class:`binsense.export.qonnx.QonnxBuilder` overrides :meth:`sign`,
    :meth:`binary_weight`, :meth:`binary_conv`, :meth:`threshold` and :meth:`planes`.
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

    # ---------------------------------------------------------------- float stages
    #: The handler (a method name) of each typed float op of a float stage
    #: (:mod:`binsense.deploy.stage`), called as ``handler(x, op, shape, out_shape, base)``
    #: with the op's input and output shapes (no batch axis); a type not here does not
    #: export (a residual unit's :class:`~binsense.deploy.stage.ShortcutOp`).
    FLOAT_OPS: ClassVar[dict[type, str]] = {
        stage.Standardize: "standardize",
        stage.Conv: "float_conv",
        stage.Linear: "float_linear",
        stage.BatchNorm: "norm",
        stage.ScaleShift: "norm",
        stage.MaxPool: "maxpool",
        stage.AdaptiveAvgPool: "adaptive_avg_pool",
        stage.GlobalPool: "global_pool",
        stage.Flatten: "flatten",
        stage.ReLU: "relu",
        stage.Hardtanh: "hardtanh",
        stage.Sign: "sign_op",
        stage.DeSignShift: "design_shift",
    }

    def float_stage(self, x: str, op: ir.FloatStage, shape: tuple, out_shape: tuple,
                    base: str) -> str:  # fmt: skip
        """A float stage: its typed ops in order, each by its :attr:`FLOAT_OPS` handler
        (graph names ``{base}_{index}_{type}``), each op's output shape from a run on
        the meta device (no memory; :func:`op_shapes` checked the stage first)."""
        meta = torch.empty(1, *shape, device="meta")
        for i, float_op in enumerate(op.ops):
            kind = type(float_op).__name__
            name = f"{base}_{i}_{kind.lower()}"
            handler = self.FLOAT_OPS.get(type(float_op))
            if handler is None:
                known = ", ".join(t.__name__ for t in self.FLOAT_OPS)
                raise BinsenseError(
                    f"{name}: a {kind} op does not export to {self.flavour} (float stages "
                    f"export {known}); run it with the packed engine (binsense deploy)."
                )
            with torch.no_grad():
                meta = float_op.run(meta)
            after = tuple(meta.shape[1:])
            x = getattr(self, handler)(x, float_op, shape, after, name)
            shape = after
        return x

    def standardize(self, x: str, op: stage.Standardize, shape: tuple, out_shape: tuple,
                    base: str) -> str:  # fmt: skip
        """A float encoder: ``(x - mean) / std`` per colour channel."""
        mean = self.float_const(f"{base}_mean", op.mean.cpu().numpy().reshape(1, -1, 1, 1))
        std = self.float_const(f"{base}_std", op.std.cpu().numpy().reshape(1, -1, 1, 1))
        return self.node("Div", [self.node("Sub", [x, mean]), std], base)

    def float_conv(self, x: str, op: stage.Conv, shape: tuple, out_shape: tuple,
                   base: str) -> str:  # fmt: skip
        """A float conv: the exact fixed-order chain (:meth:`fma_conv`), or one ``Conv``
        (not :attr:`exact_float`)."""
        if self.exact_float:
            return self.fma_conv(x, op, shape, base)
        attrs = {"kernel_shape": list(op.weight.shape[2:]), "strides": list(op.stride),
                 "pads": [*op.padding, *op.padding], "dilations": [1, 1],
                 "group": op.groups}  # fmt: skip
        return self.node("Conv", self._layer_inputs(x, op, base), base, **attrs)

    def float_linear(self, x: str, op: stage.Linear, shape: tuple, out_shape: tuple,
                     base: str) -> str:  # fmt: skip
        """A float linear layer: on ±1 inputs (no input sign of its own) the fixed-order
        sum (:meth:`ordered_linear`), else one ``Gemm``."""
        if self.exact_float and op.pm1_input and not op.sign_input:
            return self.ordered_linear(x, op, base)
        return self.node("Gemm", self._layer_inputs(x, op, base), base, transB=1)

    def norm(self, x: str, op: stage.BatchNorm | stage.ScaleShift, shape: tuple,
             out_shape: tuple, base: str) -> str:  # fmt: skip
        """A norm as its recorded affine form (:attr:`~binsense.deploy.stage.BatchNorm.form`,
        probed once by :func:`binsense.deploy.stage.lower`; a scale and shift is exact by
        definition); its probe mismatches counted in :attr:`float_mismatches`."""
        form = op.form
        self.float_mismatches += form.mismatches
        return self.affine(x, form, len(shape) + 1, base)

    def maxpool(self, x: str, op: stage.MaxPool | ir.MaxPoolInt, shape: tuple,
                out_shape: tuple, base: str) -> str:  # fmt: skip
        """A max-pool (float, or on integers) of the op's plain geometry."""
        pads = list(op.padding)
        return self.node(
            "MaxPool", [x], base, kernel_shape=list(op.kernel), strides=list(op.stride),
            pads=pads + pads, dilations=list(op.dilation), ceil_mode=int(op.ceil_mode),
        )  # fmt: skip

    def adaptive_avg_pool(self, x: str, op: stage.AdaptiveAvgPool, shape: tuple,
                          out_shape: tuple, base: str) -> str:  # fmt: skip
        if tuple(op.output_size) != (1, 1):
            raise BinsenseError(
                f"{base}: only a global adaptive average pool exports (output size 1, got "
                f"{tuple(op.output_size)})."
            )
        return self.node("GlobalAveragePool", [x], base)

    def global_pool(self, x: str, op: stage.GlobalPool, shape: tuple, out_shape: tuple,
                    base: str) -> str:  # fmt: skip
        """The sum or mean over the map (``ReduceSum`` / ``ReduceMean``, axes as an input
        since opset 18)."""
        axes = self.const(f"{base}_axes", np.array([2, 3]))
        reduce = "ReduceSum" if op.mode == "sum" else "ReduceMean"
        return self.node(reduce, [x, axes], base, keepdims=0)

    def flatten(self, x: str, op: stage.Flatten, shape: tuple, out_shape: tuple,
                base: str) -> str:  # fmt: skip
        return self.node("Flatten", [x], base, axis=1)

    def relu(self, x: str, op: stage.ReLU, shape: tuple, out_shape: tuple, base: str) -> str:
        return self.node("Relu", [x], base)

    def hardtanh(self, x: str, op: stage.Hardtanh, shape: tuple, out_shape: tuple,
                 base: str) -> str:  # fmt: skip
        lo = self.const(f"{base}_lo", np.float32(op.min_val))
        hi = self.const(f"{base}_hi", np.float32(op.max_val))
        return self.node("Clip", [x, lo, hi], base)

    def sign_op(self, x: str, op: stage.Sign, shape: tuple, out_shape: tuple, base: str) -> str:
        return self.sign(x, base)

    def design_shift(self, x: str, op: stage.DeSignShift, shape: tuple, out_shape: tuple,
                     base: str) -> str:  # fmt: skip
        """DeSign: ``x`` minus its ``(C, H, W)`` threshold map, then the sign when the op
        has one."""
        if len(shape) != 3:
            raise BinsenseError(f"{base}: DeSign takes (C, H, W) maps, got shape {shape}.")
        with torch.no_grad():
            t = design_threshold_map(op.kernel, op.scale, *shape).detach().float().cpu().numpy()
        shifted = self.node("Sub", [x, self.float_const(f"{base}_t", t)], f"{base}_shift")
        return self.sign(shifted, base) if op.sign else shifted

    # ---------------------------------------------------------------- float arithmetic
    def affine(self, x: str, form: Affine, rank: int, base: str) -> str:
        """``a x + b`` per channel in the norm's arithmetic (one rounding when fused)."""
        shape = (1, -1, *([1] * (rank - 2)))
        a = self.float_const(f"{base}_a", form.a.reshape(shape))
        b = self.float_const(f"{base}_b", form.b.reshape(shape))
        if not form.fused:
            return self.node("Add", [self.node("Mul", [x, a], f"{base}_ax"), b], base)
        return self.fma(self.f64(x), self.f64(a), b, base)

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

    def fma_conv(self, x: str, op: stage.Conv, shape: tuple, base: str) -> str:
        """A float conv in the one order of :mod:`binsense.deploy.floatops`: per group,
        ``Slice`` each tap (kernel row, column, then channel) and chain exact FMAs from +0
        (zero padding: a padded tap adds an exact 0), the bias added last."""
        weight = op.weight.detach().float().cpu().numpy()
        out_channels, _, kh, kw = weight.shape
        (sh, sw), (ph, pw) = op.stride, op.padding
        c_in, h, w = shape
        g = op.groups
        cg, og = c_in // g, out_channels // g
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if op.sign_input:
            x = self.sign(x, f"{base}_in")
        if ph or pw:
            pads = self.const(f"{base}_pads", np.array([0, 0, ph, pw, 0, 0, ph, pw]))
            x = self.node("Pad", [x, pads], f"{base}_padded")
        self._count_weights(op, int(weight.size))
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
        if op.bias is not None:
            bias = self.float_const(f"{base}_bias", op.bias.cpu().numpy().reshape(1, -1, 1, 1))
            acc = self.node("Add", [acc, bias], base)
        return acc

    def ordered_linear(self, x: str, op: stage.Linear, base: str) -> str:
        """A float linear layer on ±1 inputs in the one order of
        :mod:`binsense.deploy.floatops`: the products (exact: ±w) summed left to right by
        ``CumSum`` (sequential in onnxruntime; its ``Gemm`` sums in blocks of K), the last
        partial sum taken, the bias added last."""
        weight = op.weight.detach().float().cpu().numpy()
        self._count_weights(op, int(weight.size))
        k = weight.shape[1]
        xu = self.node("Unsqueeze", [x, self.const(f"{base}_ax1", np.array([1]))], f"{base}_x")
        products = self.node("Mul", [xu, self.const(f"{base}_w", weight)], f"{base}_products")
        sums = self.node("CumSum", [products, self.const(f"{base}_axis", np.array(-1))])
        last = self.node("Gather", [sums, self.const(f"{base}_last", np.array([k - 1]))],
                         f"{base}_last_sum", axis=2)  # fmt: skip
        y = self.node("Squeeze", [last, self.const(f"{base}_ax2", np.array([2]))], f"{base}_sum")
        if op.bias is not None:
            y = self.node("Add", [y, self.float_const(f"{base}_bias", op.bias.cpu().numpy())], base)
        return y

    def _layer_inputs(self, x: str, op: stage.Conv | stage.Linear, base: str) -> list[str]:
        """A conv's or linear layer's inputs: ``x`` (through its input sign, if any), its
        weights (binary: stored as bits; float: float32) and its bias."""
        inputs = [self.sign(x, f"{base}_in") if op.sign_input else x]
        w = op.weight.detach().cpu().numpy()
        if op.binary:
            inputs.append(self._weight(base, w))
        else:
            inputs.append(self.float_const(f"{base}_w", w))
        if op.bias is not None:
            inputs.append(self.float_const(f"{base}_bias", op.bias.cpu().numpy()))
        return inputs

    def _count_weights(self, op: stage.Conv | stage.Linear, n: int) -> None:
        """``n`` weights of ``op`` written as float taps (:meth:`fma_conv`,
        :meth:`ordered_linear`): binary weights if ``op`` is binary (:class:`ExportInfo`'s
        one definition), else float parameters."""
        if op.binary:
            self.binary_weights += n
        else:
            self.float_params += n

    def _weight(self, base: str, w: np.ndarray) -> str:
        if not np.all(np.abs(w) == 1):
            raise BinsenseError(f"{base}: binary weights must be ±1.")
        return self.binary_weight(base, w.astype(np.int8))

    # ---------------------------------------------------------------- the program's ops
    #: The handler (a method name) of each op type of a program (:mod:`binsense.deploy.ir`),
    #: called as ``handler(x, op, shape, out_shape, name)``; a type not here does not export.
    PROGRAM_OPS: ClassVar[dict[type, str]] = {
        ir.PlanesInput: "planes_op",
        ir.FloatStage: "float_stage",
        ir.ToInt8: "to_int8",
        ir.PackedConv: "packed_conv",
        ir.PackedLinear: "packed_linear",
        ir.MaxPoolInt: "maxpool",
        ir.Threshold: "threshold_op",
        ir.FlattenOp: "flatten",
        ir.Shuffle: "shuffle",
    }

    def planes_op(self, x: str, op: ir.PlanesInput, shape: tuple, out_shape: tuple,
                  base: str) -> str:  # fmt: skip
        return self.planes(x, op, out_shape)

    def to_int8(self, x: str, op: ir.ToInt8, shape: tuple, out_shape: tuple, base: str) -> str:
        return x  # the graph keeps ±1 as float32

    def packed_conv(self, x: str, op: ir.PackedConv, shape: tuple, out_shape: tuple,
                    base: str) -> str:  # fmt: skip
        if op.fan_in >= FLOAT_EXACT:
            raise BinsenseError(f"{base}: fan-in {op.fan_in} is too large for float32.")
        return self.binary_conv(x, op, base)

    def packed_linear(self, x: str, op: ir.PackedLinear, shape: tuple, out_shape: tuple,
                      base: str) -> str:  # fmt: skip
        w = self.binary_weight(base, np.ascontiguousarray(pm1_weight(op).T))
        return self.node("MatMul", [x, w], base)

    def threshold_op(self, x: str, op: ir.Threshold, shape: tuple, out_shape: tuple,
                     base: str) -> str:  # fmt: skip
        return self.threshold(x, op, out_shape, base)

    def shuffle(self, x: str, op: ir.Shuffle, shape: tuple, out_shape: tuple, base: str) -> str:
        return self.channel_shuffle(x, op.groups, shape, base)

    def binary_conv(self, x: str, op: ir.PackedConv, name: str) -> str:
        """A packed conv as one ``Conv`` on ±1 values (every output an integer, exact in
        float32 whatever the summation order)."""
        w = self.binary_weight(name, pm1_weight(op))
        return self.node("Conv", [x, w], name, group=op.groups, **conv_attrs(op))

    def channel_shuffle(self, x: str, groups: int, shape: tuple, base: str) -> str:
        c = shape[0]
        split = self.const(f"{base}_split", np.array([-1, groups, c // groups, *shape[1:]]))
        merged = self.const(f"{base}_merge", np.array([-1, *shape]))
        view = self.node("Reshape", [x, split], f"{base}_view")
        swapped = self.node("Transpose", [view], f"{base}_t", perm=[0, 2, 1, 3, 4])
        return self.node("Reshape", [swapped, merged], base)

    # ---------------------------------------------------------------- the program
    def program(self, deployed: DeployedModel, input_shape: tuple[int, int, int]) -> Any:
        """The ONNX model of ``deployed`` for images ``input_shape``: each op by its
        :attr:`PROGRAM_OPS` handler."""
        helper, tp = self.helper, self.onnx.TensorProto
        no_residual(deployed, self.flavour)
        shapes = op_shapes(deployed, input_shape)
        x, shape = "image", tuple(input_shape)
        for (name, op), out_shape in zip(deployed.ops.named(), shapes, strict=True):
            handler = self.PROGRAM_OPS.get(type(op))
            if handler is None:
                raise BinsenseError(
                    f"op {name} ({type(op).__name__}) does not export to {self.flavour}; "
                    "run it with the packed engine (binsense deploy)."
                )
            x = getattr(self, handler)(x, op, shape, tuple(out_shape), name)
            shape = tuple(out_shape)
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
