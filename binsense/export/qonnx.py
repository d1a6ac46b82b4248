r"""The QONNX flavour of the ONNX export, for FINN and hls4ml.

QONNX (Pappalardo et al., "QONNX: Representing Arbitrary-Precision Quantized Neural
Networks", arXiv:2206.07527; ``fastmachinelearning/qonnx``) adds quantization ops in the
domain ``qonnx.custom_op.general``. This export uses two of them, with the semantics of
the ``qonnx`` package's executor:

- ``BipolarQuant(x, scale)``: :math:`s \cdot (+1 \text{ if } x \ge 0 \text{ else } -1)`
  (0 maps to +1). Every binarisation (the float first layer's sign) and every binary
  weight tensor goes through it (float ±1 initializers, as Brevitas exports them);
- ``MultiThreshold(x, T)`` with attributes ``out_scale``, ``out_bias``, ``out_dtype``:
  :math:`\mathrm{out}_{n,c,\dots} = \text{out\_scale} \cdot
  \#\{i : x_{n,c,\dots} \ge T_{c,i}\} + \text{out\_bias}`. A folded (norm, sign) pair is
  one threshold per channel with ``out_scale = 2, out_bias = -1`` (``out_dtype =
  "BIPOLAR"``): :math:`+1` iff :math:`f\,y \ge f\,\tau`, where a standard ``Mul`` by the
  direction :math:`f = \pm 1` comes first (a negative BN scale). DeSign thresholds per
  position class subtract the tiled :math:`\tau` map first and threshold at 0.
  A **thermometer encoder** is a ``MultiThreshold`` on the 8-bit ADC code: each of its
  ``K`` planes of channel ``c`` is the code repeated (``Gather`` on the channel axis) and
  compared with that plane's threshold code. An encoder whose planes are not thresholds
  of the code (the natural binary code) is refused with one line.

The graph has a fixed batch of 1 (FINN's convention); run ``InferShapes`` (qonnx) before
``qonnx.core.onnx_exec.execute_onnx``, as for any QONNX model. A float first layer stays
one standard ``Conv`` and a float classifier one ``Gemm`` (FINN maps them; onnxruntime
may sum them in another order than the engine's, :mod:`binsense.deploy.floatops`, and so
differ in the last bit, unlike the standard export's ordered chains). The binary
convolutions and matrix products stay standard ``Conv`` / ``MatMul`` on ±1 values
(FINN's streamlining turns them into XNOR-popcount units). Every ``Conv`` carries its
``kernel_shape`` and is dense or depthwise: a grouped binary conv is written as one
``Conv`` per group (``Slice``, ``Conv``, ``Concat``), since qonnx's
``LowerConvsToMatMul`` (FINN's lowering to ``Im2Col`` + ``MatMul``) handles no other
grouping. So ``LowerConvsToMatMul`` (once the ``BipolarQuant`` weights are folded, as
FINN folds them) and ``qonnx.util.inference_cost`` accept the graph; the lowered graph
gives the same logits (tests). :func:`run_qonnx` evaluates the graph with
``onnx.reference`` and this module's implementations of the two ops (the published
semantics above); the test suite checks it against the packed engine.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from binsense.deploy import ir
from binsense.deploy.program import DeployedModel
from binsense.errors import BinsenseError
from binsense.export.common import pm1_weight, threshold_arrays
from binsense.export.onnx import (
    ExportInfo,
    GraphBuilder,
    conv_attrs,
    require_onnx,
    write_model,
)

#: The QONNX custom-op domain (``qonnx.custom_op.general``).
QONNX_DOMAIN = "qonnx.custom_op.general"


class QonnxBuilder(GraphBuilder):
    """:class:`~binsense.export.onnx.GraphBuilder` with QONNX binarisation and thresholds."""

    flavour = "QONNX"
    batch = 1  # FINN's convention (qonnx's executor needs fixed shapes)
    exact_float = False  # a standard Conv and Gemm, which FINN maps (module docstring)

    def __init__(self) -> None:
        super().__init__()
        self.opsets[QONNX_DOMAIN] = 1

    def binary_conv(self, x: str, op: ir.PackedConv, name: str) -> str:
        """A packed conv as a dense or depthwise ``Conv`` (qonnx's ``LowerConvsToMatMul``
        lowers no other grouping): a grouped one is, per group, a ``Slice`` of its input
        channels (which keeps qonnx's ``BIPOLAR`` datatype) and a ``Conv``, then one
        ``Concat``."""
        g, cg = op.groups, op.in_per_group
        og = op.out_channels // g
        if g == 1 or (og == 1 and cg == 1):
            return super().binary_conv(x, op, name)
        pm1 = pm1_weight(op)
        axis = self.const(f"{name}_axis", np.array([1]))
        outs = []
        for i in range(g):
            start = self.const(f"{name}_g{i}_start", np.array([i * cg]))
            end = self.const(f"{name}_g{i}_end", np.array([(i + 1) * cg]))
            part = self.node("Slice", [x, start, end, axis], f"{name}_in_g{i}")
            w = self.binary_weight(f"{name}_g{i}", pm1[i * og : (i + 1) * og])
            outs.append(self.node("Conv", [part, w], f"{name}_g{i}", group=1, **conv_attrs(op)))
        return self.node("Concat", outs, name, axis=1)

    def sign(self, x: str, base: str = "sign") -> str:
        """``BipolarQuant(x, 1.0)``."""
        return self.node("BipolarQuant", [x, self.one()], base, domain=QONNX_DOMAIN)

    def binary_weight(self, base: str, pm1) -> str:
        """Float ±1 initializer through ``BipolarQuant`` (the form FINN folds)."""
        self.binary_weights += int(pm1.size)
        w = self.const(f"{base}_w_float", np.asarray(pm1, dtype=np.float32))
        return self.node("BipolarQuant", [w, self.one()], f"{base}_w", domain=QONNX_DOMAIN)

    def multithreshold(self, x: str, thresholds: np.ndarray, base: str, scale: float,
                       bias: float, dtype: str) -> str:  # fmt: skip
        t = self.const(f"{base}_thresholds", np.asarray(thresholds, dtype=np.float32))
        return self.node(
            "MultiThreshold", [x, t], base, domain=QONNX_DOMAIN, out_scale=float(scale),
            out_bias=float(bias), out_dtype=dtype,
        )  # fmt: skip

    def threshold(self, y: str, th: ir.Threshold, shape: tuple, base: str) -> str:
        """``MultiThreshold`` of ``flip * y`` (one threshold per channel), or of
        ``flip * (y - tau_map)`` at 0 for DeSign position classes."""
        tau, flip = threshold_arrays(th, shape)
        self.threshold_values += int(tau.size)
        c = shape[0]
        if tau.ndim == 1:
            fy = self.node("Mul", [y, self.broadcast(f"{base}_flip", flip, shape)], f"{base}_fy")
            return self.multithreshold(fy, (flip * tau).reshape(c, 1), base, 2, -1, "BIPOLAR")
        shifted = self.node("Sub", [y, self.broadcast(f"{base}_tau", tau, shape)], f"{base}_d")
        fy = self.node("Mul", [shifted, self.broadcast(f"{base}_flip", flip, shape)],
                       f"{base}_fy")  # fmt: skip
        return self.multithreshold(fy, np.zeros((c, 1)), base, 2, -1, "BIPOLAR")

    def planes(self, x: str, op: ir.PlanesInput, shape: tuple) -> str:
        """A thermometer: ``MultiThreshold`` of the code, one threshold per plane."""
        table = op.table.cpu().numpy()  # (C, 256, K) bool
        c, n, k = table.shape
        thresholds, flips = thermometer_thresholds(table)
        codes = self.node("Cast", [self.adc_codes(x)], "adc_code_f",
                          to=self.onnx.TensorProto.FLOAT)  # fmt: skip
        channel = self.const("plane_channel", np.repeat(np.arange(c), k))
        repeated = self.node("Gather", [codes, channel], "code_per_plane", axis=1)
        flip = self.const("plane_flip", flips.reshape(1, c * k, 1, 1).astype(np.float32))
        directed = self.node("Mul", [repeated, flip], "code_directed")
        return self.multithreshold(directed, (flips * thresholds).reshape(c * k, 1), "planes",
                                   2, -1, "BIPOLAR")  # fmt: skip


def thermometer_thresholds(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(t, f)``, ``(C*K,)`` each, with plane ``(c, k)`` of the code table ``+1`` iff
    ``f * code >= f * t``; one line of error for a plane that is no threshold."""
    c, n, k = table.shape
    codes = np.arange(n)
    t = np.zeros((c, k), dtype=np.int64)
    f = np.ones((c, k), dtype=np.int64)
    for ci in range(c):
        for ki in range(k):
            bits = table[ci, :, ki]
            rising = np.nonzero(bits)[0]
            if bits.all() or not bits.any() or bool(np.all(bits == (codes >= rising[0]))):
                t[ci, ki] = 0 if bits.all() else n if not bits.any() else rising[0]
            elif bool(np.all(bits == (codes <= rising[-1]))):
                t[ci, ki], f[ci, ki] = rising[-1], -1
            else:
                raise BinsenseError(
                    "the QONNX export writes binary encoders as thresholds of the ADC code; "
                    "this encoder's planes are not thresholds (e.g. the natural binary code): "
                    "use the standard ONNX export."
                )
    return t.reshape(-1), f.reshape(-1)


def build_qonnx(
    deployed: DeployedModel, input_shape: tuple[int, int, int]
) -> tuple[Any, QonnxBuilder]:
    """The QONNX model of ``deployed`` (not written) and its builder."""
    builder = QonnxBuilder()
    return builder.program(deployed, tuple(input_shape)), builder


def export_qonnx(
    deployed: DeployedModel, path: str | os.PathLike, input_shape: tuple[int, int, int]
) -> ExportInfo:
    """Write ``deployed`` as a QONNX file (module docstring)."""
    model, builder = build_qonnx(deployed, input_shape)
    return write_model(model, path, builder)


# ---------------------------------------------------------------- evaluation


def bipolar_quant(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """QONNX ``BipolarQuant``: ``scale * where(x >= 0, 1, -1)``."""
    return (np.where(x >= 0, 1.0, -1.0) * scale).astype(x.dtype)


def multithreshold(x: np.ndarray, thresholds: np.ndarray, out_scale: float = 1.0,
                   out_bias: float = 0.0) -> np.ndarray:  # fmt: skip
    """QONNX ``MultiThreshold`` on ``(N, C, ...)``: ``out_scale * #{i: x >= T[c, i]} +
    out_bias`` (``T`` of shape ``(C, B)`` or ``(1, B)``)."""
    moved = np.moveaxis(x, 1, -1)[..., None]  # N, ..., C, 1
    count = np.count_nonzero(moved >= thresholds, axis=-1).astype(x.dtype)
    return (out_scale * np.moveaxis(count, -1, 1) + out_bias).astype(x.dtype)


def _reference_ops() -> list:
    require_onnx()
    from onnx.reference.op_run import OpRun

    class BipolarQuant(OpRun):
        op_domain = QONNX_DOMAIN

        def _run(self, x, scale):
            return (bipolar_quant(x, scale),)

    class MultiThreshold(OpRun):
        op_domain = QONNX_DOMAIN

        def _run(self, x, thresholds, out_scale=1.0, out_bias=0.0, out_dtype="",
                 data_layout=""):  # fmt: skip
            return (multithreshold(x, thresholds, out_scale, out_bias),)

    return [BipolarQuant, MultiThreshold]


def run_qonnx(path_or_model: Any, images: np.ndarray) -> np.ndarray:
    """Logits of a QONNX export for float32 images in [0, 1], by ``onnx.reference`` with
    the two QONNX ops' published semantics (:func:`bipolar_quant`,
    :func:`multithreshold`)."""
    require_onnx()
    from onnx.reference import ReferenceEvaluator

    source = str(path_or_model) if isinstance(path_or_model, str | os.PathLike) else path_or_model
    session = ReferenceEvaluator(source, new_ops=_reference_ops())
    return session.run(["logits"], {"image": np.ascontiguousarray(images, dtype=np.float32)})[0]


__all__ = [
    "QONNX_DOMAIN",
    "QonnxBuilder",
    "bipolar_quant",
    "build_qonnx",
    "export_qonnx",
    "multithreshold",
    "run_qonnx",
    "thermometer_thresholds",
]
