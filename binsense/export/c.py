r"""A deployed BNN as C99: XNOR-popcount layers, no heap (libm's ``fmaf`` for float parts).

``export_c(deployed, "out/", input_shape=(1, 28, 28))`` writes

- ``model.h``: the API (``model_predict``, ``model_logits``, sizes as macros) and, inside
  ``#ifdef BINSENSE_MODEL_DATA`` (defined by ``model.c`` only), the model as ``const``
  arrays: each binary layer's weights as one dense bit stream of ``uint32_t`` words,
  integer thresholds ``int16_t`` (``int32_t`` only for a fan-in of 32,767 or more) with
  one direction bit each, a binary encoder's code table as bits, the float first layer
  and head parameters as exact hexadecimal float literals;
- ``model.c``: the layers and ``int model_predict(const uint8_t *image)`` /
  ``void model_logits(const uint8_t *image, float *logits)``; ``image`` is
  ``C x H x W`` bytes, channel-planar (the pixel values 0..255 the model was trained on);
- ``README.md``: flash (``const`` data + a code estimate) and RAM (arena + a stack
  estimate), the build line and the ``-D`` options;
- for ``target="host"`` (default): ``main.c``, ``./model IMAGES.raw [--logits]`` reads
  raw images back to back and prints one prediction (or the logits) per line, and a
  ``Makefile`` building it; for ``target="cortex-m4"``: a ``Makefile`` building
  ``model.o`` with ``arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -mfpu=fpv4-sp-d16
  -mfloat-abi=hard`` (no ``main``, no I/O: link it into a firmware).

**As small as its bits.** A layer of :math:`C_{out}` filters of :math:`K` weights stores
:math:`C_{out} K` bits in :math:`\lceil C_{out} K / 32 \rceil` words: the filters follow
each other with no padding per tap, group or channel (an earlier layout padded each
group's channels to a 64-bit word per tap, 2-5x the bits for the compact grouped and
block-pruned models, whose groups are 4-16 channels wide). Block pruning
(:mod:`binsense.compress.prune`) removes whole channels, so a pruned model is a smaller
dense model here: nothing of it is stored. Activations are dense bit streams too.

**Layers.** A binary conv computes, at each output position,
:math:`y = 2\,\mathrm{popcount}(\overline{x \oplus w}) - K_{\text{valid}}` over the
*in-bounds* taps only: skipping a padded tap is exactly PyTorch's zero padding (no border
correction needed), with :math:`K_{\text{valid}}` the channels times the taps inside the
image. A tap reads its group's ``cin_g`` bits at any bit offset of the input and of
the weight stream (two words shifted together, ``bsn_get``); without groups, a kernel
row's in-bounds taps are one run of bits. The conv, its max-pool (recomputing the
window's conv outputs) and its integer threshold are fused, so only packed bits are
stored between layers: one static arena of ``uint32_t`` words holds a layer's input at
one end and its output at the other, sized to the largest such pair
(``MODEL_ARENA_WORDS``, the peak activation memory, printed at export). Channel
shuffles and flattening cost nothing: each layer writes its bits directly in the layout
the next layer reads (per pixel along all channels, group ``g`` at ``g * cin_g``; or
flat in ``C, H, W`` order for a fully connected layer).

**Float parts.** A float first layer is computed in float32 from a per-channel table of
the encoder's output for each of the 256 pixel values (exact: the encoder is
element-wise), summed in the one order of the engine (:mod:`binsense.deploy.floatops`:
kernel row, column, then channel, one ``fmaf`` a tap, the bias last), then max-pool, the
norm and the sign. Every norm is the norm's own arithmetic: the affine form the program
records (:attr:`binsense.deploy.stage.BatchNorm.form`, found once when the program was
built by :func:`binsense.deploy.stage.norm_affine`; on the integer popcounts of a head,
checked on every integer the layer can output). An FMA is ``BSN_FMA``, C99's ``fmaf`` by
default (exact by definition; one ``vfma.f32`` on a Cortex-M4F, ``vfmadd`` with
``-mfma`` on x86; link ``-lm``): float32 arithmetic only, no float64. Do not compile
with ``-ffast-math``: the float parts rely on IEEE float32 products and sums (no product
is ever added in the same expression, so ``-ffp-contract`` changes nothing). A float
linear classifier on ±1 inputs sums in index order, the engine's order: the logits equal
the engine's bit for bit. ``model.c`` builds clean under ``-Wdouble-promotion`` (the
Cortex-M4 Makefile sets it): no ``double``. A float first conv with ±1 weights
(``first_layer = "binary"`` on a float encoder) stores them as bits and multiplies by
``±1.0f``, the same values.

**Popcount** is portable SWAR code on 32-bit words (Hacker's Delight 5-1: a Cortex-M4
has no popcount instruction); define ``BINSENSE_BUILTIN_POPCOUNT`` to use
``__builtin_popcountl`` (one instruction with ``-mpopcnt`` on x86, ``CNT`` on AArch64),
or define ``BSN_POPCOUNT32(x)`` yourself (an intrinsic of your core).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from binsense.deploy import ir, stage
from binsense.deploy.bits import unpack_bits
from binsense.deploy.kernels import compilers
from binsense.deploy.program import DeployedModel
from binsense.deploy.stage import Affine
from binsense.encoders.base import ADC_MAX, adc_code
from binsense.errors import BinsenseError
from binsense.export.common import FLOAT_EXACT, no_residual, op_shapes
from binsense.io import atomic_write_text
from binsense.layers.design import design_threshold_map


@dataclass
class CExportInfo:
    """What the C export wrote, and its memory. ``binary_weights``: the ±1 weights of the
    binary layers, as :class:`binsense.export.onnx.ExportInfo` and ``binsense summary``
    count them (a binary encoder's code table is not counted)."""

    folder: str
    weight_bytes: int
    activation_bytes: int
    input_bytes: int
    binary_weights: int
    float_mismatches: int = 0
    files: list[str] = field(default_factory=list)
    #: bytes of the binary weights' bit streams (within 4 bytes a layer of their bits / 8)
    binary_weight_bytes: int = 0
    #: ``host`` or ``cortex-m4`` (:data:`TARGETS`)
    target: str = "host"
    #: Cortex-M4 estimates (README.md): Thumb-2 code plus layer descriptors, and stack
    code_bytes: int = 0
    stack_bytes: int = 0

    def line(self) -> str:
        return (
            f"wrote {', '.join(self.files)} to {self.folder} (target {self.target}): weight "
            f"memory {self.weight_bytes:,} bytes ({self.binary_weights:,} binary weights in "
            f"{self.binary_weight_bytes:,} bytes), peak activation buffer "
            f"{self.activation_bytes:,} bytes (static), input image {self.input_bytes:,} bytes"
        )


# ---------------------------------------------------------------- C literals


class _Data:
    """The ``const`` arrays of ``model.h`` and their byte count."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.bytes = 0

    def array(self, name: str, ctype: str, values: np.ndarray) -> str:
        flat = np.asarray(values).reshape(-1)
        if flat.size == 0:
            raise BinsenseError(f"an empty array {name} in the C export.")
        if ctype == "uint32_t":  # bit streams: hexadecimal words
            items = [f"0x{int(v):08x}u" for v in flat.astype(np.uint32)]
            size = 4
        elif ctype == "float":
            f32 = flat.astype(np.float32)
            if not np.all(np.isfinite(f32)):
                raise BinsenseError(f"{name}: non-finite float parameters do not export to C.")
            items = [_float_literal(float(v)) for v in f32]
            size = 4
        else:
            size = {"int32_t": 4, "int16_t": 2, "int8_t": 1, "uint16_t": 2, "uint8_t": 1}[ctype]
            items = [str(int(v)) for v in flat]
        self.bytes += size * flat.size
        body = ",\n".join(
            "    " + ", ".join(items[i : i + 8]) for i in range(0, len(items), 8)
        )  # fmt: skip
        self.lines.append(f"static const {ctype} {name}[{flat.size}] = {{\n{body}\n}};\n")
        return name


def _stream(bits: np.ndarray) -> np.ndarray:
    """Bools as one dense bit stream of ``uint32`` words: bit ``i`` is bit ``i % 32`` of
    word ``i // 32``, with no padding but the last word's tail (0). Every binary array of
    the export is one such stream, so it costs its bit count rounded up to 4 bytes,
    whatever the group widths, kernel sizes or pruned channel counts."""
    flat = np.asarray(bits, dtype=bool).reshape(-1)
    words = -(-flat.size // 32)
    padded = np.zeros(words * 32, dtype=bool)
    padded[: flat.size] = flat
    return np.packbits(padded, bitorder="little").view("<u4").astype(np.uint32)


def _float_literal(v: float) -> str:
    """An exact C99 float literal (hexadecimal)."""
    if v == 0.0:
        return "-0.0f" if np.signbit(v) else "0.0f"
    mantissa, exponent = v.hex().split("p")
    return f"{mantissa.rstrip('0').rstrip('.')}p{exponent}f"


# ---------------------------------------------------------------- lowering


@dataclass
class _Layer:
    kind: str  # planes | fconv | bconv | blin | head_lin | head_conv | head_float
    params: dict[str, Any]
    in_shape: tuple
    out_shape: tuple
    in_perm: np.ndarray | None = None  # channel shuffles between the previous layer and this
    produces_bits: bool = True


# ---- float stages: each typed op (binsense.deploy.stage) read by one handler

#: A float op as a part of a C layer: ``(part, value)``, or ``None`` where C does not
#: compute that op (its configuration).
_Part = tuple[str, Any] | None


def _sign_part(op: stage.DeSignShift) -> _Part:
    return ("sign", op) if op.sign else None  # a DeSign shift without its sign: no bits


def _linear_part(op: stage.Linear) -> _Part:
    return None if op.binary or op.sign_input else ("linear", op)


#: Float op type -> its handler, the one place the C export dispatches on a float op's
#: type. A norm is its affine form as recorded in the program (:func:`stage.lower`
#: probed it once, :attr:`stage.BatchNorm.form`); a type missing here does not export.
_FLOAT_PARTS: dict[type, Callable[[Any], _Part]] = {
    stage.Standardize: lambda op: ("encode", op),
    stage.Conv: lambda op: ("conv", op),
    stage.Linear: _linear_part,
    stage.MaxPool: lambda op: ("pool", op),
    stage.GlobalPool: lambda op: ("global_pool", op),
    stage.BatchNorm: lambda op: ("norm", op.form),
    stage.ScaleShift: lambda op: ("norm", op.form),
    stage.Sign: lambda op: ("sign", op),
    stage.DeSignShift: _sign_part,
    stage.Flatten: lambda op: ("flatten", op),
}

#: The parts each float C layer computes, in its order (each at most once, ``encode``
#: any number of times; ``required`` must be there): a float first layer, a conv head
#: (global pool, then the norm of the sums), a float head (a float linear classifier on
#: ±1 inputs; flattening is free) and the norm of a binary linear head.
_FIRST = ("encode", "conv", "pool", "norm", "sign")
_CONV_HEAD = ("global_pool", "norm")
_FLOAT_HEAD = ("linear", "norm")
_INT_HEAD = ("norm",)
_REPEATED = ("encode",)


class _Lowering:
    """The deployed program as C layers (module docstring)."""

    def __init__(self, deployed: DeployedModel, input_shape: tuple[int, int, int]) -> None:
        no_residual(deployed, "C")
        self.input_shape = tuple(input_shape)
        self.ops = list(deployed.ops.named())
        self.units = deployed.ops.units
        self.shapes = op_shapes(deployed, self.input_shape)
        self.layers: list[_Layer] = []
        self.float_mismatches = 0
        self._perm: np.ndarray | None = None
        self._lower()

    def _fail(self, name: str, what: str) -> BinsenseError:
        return BinsenseError(f"op {name}: {what} does not export to C.")

    def _lower(self) -> None:
        """Each op by its step (:attr:`_STEPS`); a step returns the index of the last op
        it consumes, or ``None`` where its op cannot stand."""
        i = 0
        while i < len(self.ops):
            name, op = self.ops[i]
            step = self._STEPS.get(type(op))
            last = step(self, i) if step is not None else None
            if last is None:
                raise self._fail(name, f"a {type(op).__name__} here")
            i = last + 1
        if not self.layers or self.layers[-1].produces_bits:
            raise BinsenseError("the C export needs a program that ends in a head (logits).")

    def _in_shape(self, i: int) -> tuple:
        return self.input_shape if i == 0 else self.shapes[i - 1]

    def _add(self, kind: str, params: dict, in_shape: tuple, out_shape: tuple,
             bits: bool = True) -> None:  # fmt: skip
        """Append a layer; the channel shuffles met since the last one go with it."""
        layer = _Layer(kind, params, tuple(in_shape), tuple(out_shape), self._perm, bits)
        self.layers.append(layer)
        self._perm = None

    # -------------------------------------------------------------- program ops
    def _planes(self, i: int) -> int | None:
        if i != 0:
            return None
        op = self.ops[i][1]
        self._add("planes", {"table": op.table.cpu().numpy()}, self._in_shape(i), self.shapes[i])
        return i

    def _float_stage(self, i: int) -> int | None:
        name, op = self.ops[i]
        shape = self._in_shape(i)
        if i == 0:
            nxt = self.ops[i + 1][1] if i + 1 < len(self.ops) else None
            if not isinstance(nxt, ir.ToInt8):
                raise self._fail(name, "a float input stage that does not end in a sign")
            self._add("fconv", self._float_first(name, op, shape), shape, self.shapes[i])
            return i + 1
        if i == len(self.ops) - 1 and self.layers:
            self._add("head_float", self._float_head(name, op, shape), shape, self.shapes[i],
                      bits=False)  # fmt: skip
            return i
        return None

    def _packed_conv(self, i: int) -> int:
        name, op = self.ops[i]
        shapes, shape = self.shapes, self._in_shape(i)
        if op.fan_in >= FLOAT_EXACT:
            raise self._fail(name, f"a fan-in of {op.fan_in}")
        unit = self.units[i]
        last, tail = unit.tail_index, unit.tail
        params = {"op": op, "pool": _pool_params(name, unit.pool), "conv_shape": shapes[i]}
        if isinstance(tail, ir.Threshold):
            params["threshold"] = tail
            self._add("bconv", params, shape, shapes[last])
        elif (isinstance(tail, ir.FloatStage) and unit.pool is None
              and last == len(self.ops) - 1):  # fmt: skip
            params.update(self._conv_head(self.ops[last][0], tail, op, shapes[i]))
            self._add("head_conv", params, shape, shapes[last], bits=False)
        else:
            raise self._fail(name, "a binary conv not followed by a threshold or head")
        return last

    def _packed_linear(self, i: int) -> int:
        name, op = self.ops[i]
        shapes, shape = self.shapes, self._in_shape(i)
        last = i + 1
        nxt = self.ops[last][1] if last < len(self.ops) else None
        params = {"op": op}
        if isinstance(nxt, ir.Threshold):
            params["threshold"] = nxt
            self._add("blin", params, shape, shapes[last])
        elif isinstance(nxt, ir.FloatStage) and last == len(self.ops) - 1:
            parts = self._parts(self.ops[last][0], nxt, _INT_HEAD, (), "head after a binary layer")
            params["affine"] = self._norm(self.ops[last][0], parts, shapes[i][0])
            self._add("head_lin", params, shape, shapes[last], bits=False)
        else:
            raise self._fail(name, "a binary linear layer not followed by a threshold")
        return last

    def _flatten(self, i: int) -> int:
        return i  # free: a fully connected layer reads the bits flat (module docstring)

    def _shuffle(self, i: int) -> int:
        name, op = self.ops[i]
        p = _shuffle_permutation(name, op.groups, self._in_shape(i)[0])
        self._perm = p if self._perm is None else p[self._perm]
        return i

    #: Program op type -> its step.
    _STEPS: dict[type, Callable[[_Lowering, int], int | None]] = {
        ir.PlanesInput: _planes,
        ir.FloatStage: _float_stage,
        ir.PackedConv: _packed_conv,
        ir.PackedLinear: _packed_linear,
        ir.FlattenOp: _flatten,
        ir.Shuffle: _shuffle,
    }

    # -------------------------------------------------------------- float parts
    def _parts(self, name: str, st: ir.FloatStage, order: tuple[str, ...],
               required: tuple[str, ...], what: str, skip: tuple[str, ...] = ()
               ) -> dict[str, list]:  # fmt: skip
        """``part -> values`` of the ops of ``st`` read by :data:`_FLOAT_PARTS`, checked
        to come in ``order`` with every ``required`` part (``skip``: parts that cost
        nothing here); one line naming the ops otherwise."""
        found: dict[str, list] = {}
        last = -1
        for op in st.ops:
            handler = _FLOAT_PARTS.get(type(op))
            part = handler(op) if handler is not None else None
            if part is not None and part[0] in skip:
                continue
            k = order.index(part[0]) if part is not None and part[0] in order else -1
            if k < 0 or k < last or (k == last and part[0] not in _REPEATED):
                break
            found.setdefault(part[0], []).append(part[1])
            last = k
        else:
            if all(p in found for p in required):
                return found
        ops = ", ".join(type(op).__name__ for op in st.ops) or "no ops"
        takes = ", ".join(p if p in required else f"[{p}]" for p in order)
        raise self._fail(name, f"a {what} of {ops} (C takes {takes})")

    def _norm(self, name: str, parts: dict[str, list], channels: int) -> Affine:
        """The recorded affine form of the stage's norm (identity without one); its
        mismatches (probe values where it differs from the module) are counted."""
        if "norm" not in parts:
            ones = np.ones(channels, np.float32)
            return Affine(ones, np.zeros(channels, np.float32), False)
        form: Affine = parts["norm"][0]
        if np.shape(form.a) != (channels,) or np.shape(form.b) != (channels,):
            raise self._fail(name, f"a norm of {np.size(form.a)} values on {channels} channels")
        self.float_mismatches += form.mismatches
        return form

    def _float_first(self, name: str, st: ir.FloatStage, in_shape: tuple) -> dict:
        parts = self._parts(name, st, _FIRST, ("conv", "sign"), "float input stage")
        conv: stage.Conv = parts["conv"][0]
        c = in_shape[0]
        cout = conv.weight.shape[0]
        # the encoder's output for every pixel value (element-wise per channel: exact)
        pixels = torch.arange(ADC_MAX + 1, dtype=torch.float32).div_(255.0)
        x = pixels.view(1, 1, 1, -1).expand(1, c, 1, ADC_MAX + 1).contiguous()
        with torch.no_grad():
            for encoder in parts.get("encode", []):
                x = encoder.run(x)
            table = x[0, :, 0, :].float()
            if conv.sign_input:
                table = torch.where(table >= 0, 1.0, -1.0)
        form = self._norm(name, parts, cout)
        sign = parts["sign"][0]
        shift = None
        if isinstance(sign, stage.DeSignShift):
            _, m, n = sign.kernel.shape
            with torch.no_grad():  # one period of the (C, H, W) map: the position classes
                t = design_threshold_map(sign.kernel, sign.scale, cout, m, n)
                shift = t.detach().float().numpy()
        conv_shape = (cout, *_conv_out(conv, in_shape[1:]))
        pool = parts["pool"][0] if "pool" in parts else None
        return {
            "table": table.numpy(), "weight": conv.weight.detach().float().numpy(),
            "conv": conv, "affine": form,
            "bias": None if conv.bias is None else conv.bias.detach().float().numpy(),
            "pool": _pool_params(name, pool), "shift": shift, "conv_shape": conv_shape,
        }  # fmt: skip

    def _conv_head(self, name: str, st: ir.FloatStage, op: ir.PackedConv, conv_shape: tuple
                   ) -> dict:  # fmt: skip
        parts = self._parts(name, st, _CONV_HEAD, ("global_pool",), "conv head")
        positions = conv_shape[1] * conv_shape[2]
        if op.fan_in * positions >= FLOAT_EXACT:
            raise self._fail(name, "a global pool whose sums exceed float32 integers")
        mean = parts["global_pool"][0].mode == "mean"
        return {"affine": self._norm(name, parts, conv_shape[0]), "mean": mean}

    def _float_head(self, name: str, st: ir.FloatStage, in_shape: tuple) -> dict:
        parts = self._parts(name, st, _FLOAT_HEAD, ("linear",), "float head",
                            skip=("flatten",))  # fmt: skip
        lin: stage.Linear = parts["linear"][0]
        n_out, n_in = lin.weight.shape
        if n_in != int(np.prod(in_shape)):
            raise self._fail(name, "a float head of the wrong width")
        norm = self._norm(name, parts, n_out) if "norm" in parts else None
        bias = None if lin.bias is None else lin.bias.detach().float().numpy()
        return {"weight": lin.weight.detach().float().numpy(), "bias": bias, "affine": norm}


def _conv_out(conv: stage.Conv, hw: tuple) -> tuple[int, int]:
    (kh, kw), (sh, sw), (ph, pw) = conv.weight.shape[2:], conv.stride, conv.padding
    return (hw[0] + 2 * ph - kh) // sh + 1, (hw[1] + 2 * pw - kw) // sw + 1


def _shuffle_permutation(name: str, groups: int, channels: int) -> np.ndarray:
    """``p[c]``: the output position of input channel ``c`` under a channel shuffle of
    ``groups`` (:func:`binsense.layers.shape.channel_shuffle`: channel ``k n + j`` of
    group ``k`` moves to ``j g + k``)."""
    if channels % groups:
        raise BinsenseError(f"op {name}: a channel shuffle of {groups} groups on {channels} "
                            "channels does not export to C.")  # fmt: skip
    c = np.arange(channels)
    n = channels // groups
    return (c % n) * groups + c // n


def _pool_params(name: str, pool: stage.MaxPool | ir.MaxPoolInt | None
                 ) -> tuple[int, int, int] | None:  # fmt: skip
    """``(kernel, stride, padding)`` of a square max-pool (a float one or one on the
    popcounts: both hold plain pairs), or ``None``."""
    if pool is None:
        return None

    def one(v: Any) -> int:
        if len(set(v)) != 1:
            raise BinsenseError(f"op {name}: only square max-pools export to C.")
        return int(v[0])

    if one(pool.dilation) != 1 or pool.ceil_mode:
        raise BinsenseError(f"op {name}: max-pools with dilation or ceil_mode do not export to C.")
    return one(pool.kernel), one(pool.stride), one(pool.padding)


# ---------------------------------------------------------------- layouts and code


def _layout(consumer: _Layer, producer_shape: tuple) -> tuple[str, int]:
    """``(C initializer of the bsn_layout the consumer reads, words)``: a dense bit
    stream, per pixel along all channels (a conv reads group ``g``'s channels at
    ``g * cin_g``) or flat in ``C, H, W`` order (a fully connected layer); ``uint32``
    words, no padding between pixels or groups (the arena holds the bits and no more)."""
    n = int(np.prod(producer_shape))
    h, w = (producer_shape[1], producer_shape[2]) if len(producer_shape) == 3 else (1, 1)
    flat = 0 if consumer.kind in ("bconv", "head_conv") else 1
    return f"{{{flat}, {h}, {w}, {producer_shape[0]}, PERM}}", -(-n // 32)


#: The C runtime (``runtime.c`` beside this module), cut into chunks at ``//@name`` lines.
RUNTIME = resources.files("binsense.export").joinpath("runtime.c").read_text(encoding="utf-8")

#: Runtime chunks each layer kind needs (a static function left unused is an error
#: under -Wall -Werror).
_NEEDS = {
    "planes": ("bit", "planes"),
    "fconv": ("geom", "fconv"),
    "bconv": ("geom", "match", "thr_type", "threshold", "bconv_at", "bconv_run"),
    "blin": ("match", "thr_type", "threshold", "blin_at", "blin_run"),
    "head_lin": ("match", "thr_type", "blin_at", "head_lin"),
    "head_conv": ("geom", "match", "thr_type", "bconv_at", "head_conv"),
    "head_float": ("bit", "head_float"),
}


def _runtime(kinds: set[str]) -> str:
    """The runtime chunks the layer ``kinds`` need, in order."""
    wanted = _chunks(kinds)
    parts = RUNTIME.split("//@")
    keep = [part.split("\n", 1)[1] for part in parts[1:] if part.split("\n", 1)[0] in wanted]
    return "".join(keep)


MAIN_C = r"""/* Reads raw images (MODEL_INPUT_BYTES each, C x H x W bytes, back to back) and prints
   one prediction per line, or the logits with --logits. Generated by binsense. */
#include <stdio.h>
#include <string.h>
#include "model.h"

int main(int argc, char **argv) {
    static uint8_t image[MODEL_INPUT_BYTES];
    float logits[MODEL_CLASSES];
    int want_logits = argc > 2 && strcmp(argv[2], "--logits") == 0;
    FILE *f;
    if (argc < 2) {
        fprintf(stderr, "usage: %s IMAGES.raw [--logits]\n", argv[0]);
        return 2;
    }
    f = fopen(argv[1], "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", argv[1]);
        return 1;
    }
    while (fread(image, 1, MODEL_INPUT_BYTES, f) == MODEL_INPUT_BYTES) {
        if (want_logits) {
            int k;
            model_logits(image, logits);
            for (k = 0; k < MODEL_CLASSES; ++k) printf(k ? " %.9g" : "%.9g", logits[k]);
            printf("\n");
        } else {
            printf("%d\n", model_predict(image));
        }
    }
    fclose(f);
    return 0;
}
"""

#: The targets of :func:`export_c`: ``host`` (a program: ``main.c`` reads raw images) and
#: ``cortex-m4`` (``model.o`` for a Cortex-M4F firmware: no ``main``, no I/O).
TARGETS = ("host", "cortex-m4")

#: The strict C99 flags every export builds under (warnings are errors).
STRICT_FLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]

#: The Cortex-M4F cross compiler and its flags: Thumb-2, the single-precision FPv4 FPU
#: (``fmaf`` is one ``vfma.f32``), hard-float calling convention.
CORTEX_M4_CC = "arm-none-eabi-gcc"
CORTEX_M4_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"]

#: ``-Wdouble-promotion`` makes any float64 arithmetic in ``model.c`` a build error (an
#: FPv4-SP has no double unit: a double would be a slow software routine); the section
#: flags let the linker drop what a firmware does not call; ``-fstack-usage`` writes
#: ``model.su``, each function's stack frame.
CORTEX_M4_EXTRA = ["-Wdouble-promotion", "-ffunction-sections", "-fdata-sections",
                   "-fstack-usage"]  # fmt: skip

MAKEFILE = """# Generated by binsense. `make` builds ./model (main.c reads raw images).
# `make DEFS=-DBINSENSE_BUILTIN_POPCOUNT` uses the compiler's popcount (README.md: options).
# Keep IEEE float semantics (no -ffast-math).
CC ?= cc
CFLAGS ?= {flags}
DEFS ?=
model: main.c model.c model.h
\t$(CC) $(CFLAGS) $(DEFS) -o model main.c model.c -lm
clean:
\trm -f model
"""

MAKEFILE_CORTEX_M4 = """# Generated by binsense: model.o for a Cortex-M4F (Thumb-2, FPv4-SP FPU).
# `make` builds model.o and prints its sections; model.su lists each function's stack.
# Link model.o into your firmware and call model_predict / model_logits (README.md).
# `make DEFS=-DBSN_POPCOUNT32=my_popcount` etc.: README.md lists the options.
# Keep IEEE float semantics (no -ffast-math).
CC = {cc}
SIZE = arm-none-eabi-size
ARCH = {arch}
CFLAGS = {flags}
DEFS =
model.o: model.c model.h
\t$(CC) $(ARCH) $(CFLAGS) $(DEFS) -c -o model.o model.c
\t$(SIZE) model.o
clean:
\trm -f model.o model.su
"""

#: Thumb-2 code bytes of each runtime chunk at ``-O2`` (arm-none-eabi-gcc 12.2,
#: ``CORTEX_M4_FLAGS``), measured on exports that use it, rounded up: the code estimate
#: of README.md. ``model_logits`` adds about ``_CALL_BYTES`` a layer.
_CODE_BYTES = {
    "base": 120, "bit": 32, "match": 392, "thr_type": 0, "threshold": 64, "planes": 184,
    "geom": 0, "fconv": 424, "bconv_at": 384, "bconv_run": 408, "blin_at": 40,
    "blin_run": 112, "head_lin": 96, "head_conv": 128, "head_float": 120, "api": 64,
}  # fmt: skip
_CALL_BYTES = 28

#: Bytes of each layer descriptor (a ``const`` struct) with 4-byte ints and pointers.
_DESCRIPTOR_BYTES = {"planes": 44, "fconv": 136, "bconv": 120, "head_conv": 120,
                     "blin": 56, "head_lin": 56, "head_float": 0}  # fmt: skip

#: The deepest call chain's stack (model_predict -> model_logits -> a layer -> its
#: popcount), measured with ``-fstack-usage`` as above and rounded up, without the
#: logits array (4 bytes a class, added).
_STACK_BYTES = 512


def _geom(op_or_conv: Any, in_shape: tuple, conv_shape: tuple, pool, out_shape: tuple) -> str:
    if isinstance(op_or_conv, ir.PackedConv):
        cout, groups, cin_g = op_or_conv.out_channels, op_or_conv.groups, op_or_conv.in_per_group
        (kh, kw), (sh, sw), (ph, pw) = op_or_conv.kernel, op_or_conv.stride, op_or_conv.padding
    else:  # a float conv (stage.Conv): weight (C_out, C_in / groups, k_h, k_w)
        conv = op_or_conv
        cout, cin_g, kh, kw = conv.weight.shape
        groups, (sh, sw), (ph, pw) = conv.groups, conv.stride, conv.padding
    pk, ps, pp = pool if pool is not None else (0, 1, 0)
    oh, ow = (out_shape[1], out_shape[2]) if len(out_shape) == 3 else conv_shape[1:]
    return (
        f"{{{in_shape[1]}, {in_shape[2]}, {cout}, {groups}, {cin_g}, {kh}, {kw}, {sh}, {sw}, "
        f"{ph}, {pw}, {conv_shape[1]}, {conv_shape[2]}, {pk}, {ps}, {pp}, {oh}, {ow}}}"
    )


def _threshold_data(data: _Data, prefix: str, th: ir.Threshold) -> str:
    """The ``bsn_thr`` initializer of ``th``: thresholds as ``int16_t`` where they fit
    (any fan-in below 32,767), else ``int32_t``; the directions as one bit each."""
    tau, flip = th.tau.cpu().numpy(), th.flip.cpu().numpy()
    big = int(np.abs(tau).max(initial=0))
    if big >= 1 << 31:
        raise BinsenseError(f"{prefix}: thresholds beyond int32.")
    m, n = (tau.shape[1], tau.shape[2]) if tau.ndim == 3 else (1, 1)
    t16 = data.array(f"{prefix}_TAU", "int16_t", tau) if big < 1 << 15 else "NULL"
    t32 = data.array(f"{prefix}_TAU", "int32_t", tau) if big >= 1 << 15 else "NULL"
    up = data.array(f"{prefix}_UP", "uint32_t", _stream(flip > 0))
    return f"{{{t16}, {t32}, {up}, {m}, {n}}}"


def _affine_data(data: _Data, prefix: str, form: Affine) -> tuple[str, str, int]:
    return (data.array(f"{prefix}_A", "float", form.a), data.array(f"{prefix}_B", "float",
            form.b), int(form.fused))  # fmt: skip


def _binary_stream(data: _Data, name: str, bits: np.ndarray) -> tuple[str, int]:
    """A binary layer's weights as one bit stream (``_stream``): its name and bytes."""
    words = _stream(bits)
    return data.array(name, "uint32_t", words), 4 * words.size


NO_THRESHOLDS = "{NULL, NULL, NULL, 1, 1}"
NO_LAYOUT = "{0, 1, 1, 1, NULL, NULL}"


def generate_c(
    deployed: DeployedModel, input_shape: tuple[int, int, int], target: str = "host"
) -> tuple[dict[str, str], CExportInfo]:
    """The C files of ``deployed`` for ``target`` (name -> text, :data:`TARGETS`) and
    their memory figures."""
    if target not in TARGETS:
        raise BinsenseError(f"unknown C target {target!r}: one of {', '.join(TARGETS)}.")
    low = _Lowering(deployed, input_shape)
    data = _Data()
    decls: list[str] = []
    body: list[str] = []
    binary_weights = 0
    binary_bytes = 0
    c, h, w = low.input_shape
    # one arena: layer k writes at its start (k even) or end (k odd), reading the other
    layouts = [
        _layout(low.layers[k + 1], layer.out_shape) if layer.produces_bits else ("", 0)
        for k, layer in enumerate(low.layers)
    ]
    words = [n for _, n in layouts]
    arena = max([words[0], 1] + [words[k - 1] + words[k] for k in range(1, len(words))])
    dst = "image"
    for k, layer in enumerate(low.layers):
        p = f"L{k}"
        layout, n_out = layouts[k]
        perms = "NULL, NULL"
        if k + 1 < len(low.layers) and low.layers[k + 1].in_perm is not None:
            perm = low.layers[k + 1].in_perm.astype(np.int64)
            if perm.max(initial=0) < 1 << 8:  # a byte a channel where it fits
                perms = f"{data.array(f'{p}_PERM', 'uint8_t', perm)}, NULL"
            else:
                perms = f"NULL, {data.array(f'{p}_PERM', 'uint16_t', perm)}"
        layout = layout.replace("PERM", perms)
        src = dst
        dst = "arena" if k % 2 == 0 else f"arena + MODEL_ARENA_WORDS - {n_out}"
        if layer.produces_bits:
            body.append(f"    bsn_clear({dst}, {n_out});")
        prm = layer.params
        if layer.kind == "planes":
            table = prm["table"]  # (C, 256, K) bool: one bit stream, K bits a code
            if not torch.equal(adc_code(torch.arange(256.0).div_(255.0)), torch.arange(256.0)):
                raise BinsenseError("the ADC code of pixel p / 255 is not p on this machine.")
            ch, _, kk = table.shape
            t = data.array(f"{p}_TABLE", "uint32_t", _stream(table))
            decls.append(f"static const bsn_planes {p} = {{{ch}, {h}, {w}, {kk}, {t}, "
                         f"{layout}}};")  # fmt: skip
            body.append(f"    bsn_run_planes(&{p}, image, {dst});")
        elif layer.kind == "fconv":
            conv = prm["conv"]
            if conv.binary or conv.sign_input:  # a binary layer on real pixels (CExportInfo)
                binary_weights += int(conv.weight.numel())
            enc = data.array(f"{p}_ENC", "float", prm["table"])
            weight = prm["weight"]
            if np.all(np.abs(weight) == 1):  # ±1 weights: bits, expanded to ±1.0f (exact)
                wt, wbits = "NULL", f"{p}_W"
                binary_bytes += _binary_stream(data, wbits, weight > 0)[1]
            else:
                wt, wbits = data.array(f"{p}_W", "float", weight), "NULL"
            bias = "NULL" if prm["bias"] is None else data.array(f"{p}_BIAS", "float", prm["bias"])
            a, b, fused = _affine_data(data, p, prm["affine"])
            shift, sm, sn = "NULL", 1, 1
            if prm["shift"] is not None:
                shift = data.array(f"{p}_SHIFT", "float", prm["shift"])
                sm, sn = prm["shift"].shape[1:]
            geom = _geom(conv, layer.in_shape, prm["conv_shape"], prm["pool"], layer.out_shape)
            decls.append(f"static const bsn_fconv {p} = {{{geom}, {enc}, {wt}, {wbits}, {bias}, "
                         f"{a}, {b}, {fused}, {shift}, {sm}, {sn}, "
                         f"{layout}}};")  # fmt: skip
            body.append(f"    bsn_run_fconv(&{p}, image, {dst});")
        elif layer.kind in ("bconv", "head_conv"):
            op: ir.PackedConv = prm["op"]
            binary_weights += op.weight_pm1.numel()
            # C_out x k_h x k_w x cin_g bits, one stream: no per-tap or per-group padding
            bits = unpack_bits(op.weight_words.cpu(), op.in_per_group, -1).numpy()
            wt, size = _binary_stream(data, f"{p}_W", bits)
            binary_bytes += size
            geom = _geom(op, layer.in_shape, prm["conv_shape"], prm["pool"],
                         layer.out_shape if layer.kind == "bconv"
                         else prm["conv_shape"])  # fmt: skip
            if layer.kind == "bconv":
                thr = _threshold_data(data, p, prm["threshold"])
                decls.append(f"static const bsn_bconv {p} = {{{geom}, {wt}, {thr}, {layout}}};")
                body.append(f"    bsn_run_bconv(&{p}, {src}, {dst});")
            else:
                a, b, fused = _affine_data(data, p, prm["affine"])
                decls.append(f"static const bsn_bconv {p} = {{{geom}, {wt}, {NO_THRESHOLDS}, "
                             f"{NO_LAYOUT}}};")  # fmt: skip
                body.append(f"    bsn_head_conv(&{p}, {int(prm['mean'])}, {a}, {b}, {fused}, "
                            f"{src}, logits);")  # fmt: skip
        elif layer.kind in ("blin", "head_lin"):
            op: ir.PackedLinear = prm["op"]  # type: ignore[no-redef]
            n_out, n_words = op.weight_words.shape
            binary_weights += n_out * op.fan_in
            bits = unpack_bits(op.weight_words.cpu(), op.fan_in, -1).numpy()  # n_out x fan_in
            wt, size = _binary_stream(data, f"{p}_W", bits)
            binary_bytes += size
            if layer.kind == "blin":
                thr = _threshold_data(data, p, prm["threshold"])
                decls.append(f"static const bsn_blin {p} = {{{op.fan_in}, {n_out}, {wt}, {thr}, "
                             f"{layout}}};")  # fmt: skip
                body.append(f"    bsn_run_blin(&{p}, {src}, {dst});")
            else:
                a, b, fused = _affine_data(data, p, prm["affine"])
                decls.append(f"static const bsn_blin {p} = {{{op.fan_in}, {n_out}, {wt}, "
                             f"{NO_THRESHOLDS}, {NO_LAYOUT}}};")  # fmt: skip
                body.append(f"    bsn_head_lin(&{p}, {a}, {b}, {fused}, {src}, logits);")
        elif layer.kind == "head_float":
            weight = prm["weight"]
            wt = data.array(f"{p}_W", "float", weight)
            bias = "NULL" if prm["bias"] is None else data.array(f"{p}_BIAS", "float", prm["bias"])
            a, b, fused = ("NULL", "NULL", 0)
            if prm["affine"] is not None:
                a, b, fused = _affine_data(data, p, prm["affine"])
            body.append(f"    bsn_head_float({weight.shape[1]}, {weight.shape[0]}, {wt}, {bias}, "
                        f"{a}, {b}, {fused}, {src}, logits);")  # fmt: skip
    classes = low.layers[-1].out_shape[0]
    kinds = {layer.kind for layer in low.layers}
    header = _header(low.input_shape, classes, arena, data, binary_bytes)
    source = _source(decls, body, _runtime(kinds))
    info = CExportInfo("", data.bytes, arena * 4, c * h * w, binary_weights, low.float_mismatches)
    info.binary_weight_bytes = binary_bytes
    info.target = target
    info.code_bytes = (sum(_CODE_BYTES[chunk] for chunk in _chunks(kinds) | {"api"})
                       + _CALL_BYTES * len(low.layers)
                       + sum(_DESCRIPTOR_BYTES[layer.kind] for layer in low.layers))  # fmt: skip
    info.stack_bytes = _STACK_BYTES + 4 * classes
    files = {"model.h": header, "model.c": source}
    if target == "host":
        files["main.c"] = MAIN_C
        files["Makefile"] = MAKEFILE.format(flags=" ".join(STRICT_FLAGS))
    else:
        files["Makefile"] = MAKEFILE_CORTEX_M4.format(
            cc=CORTEX_M4_CC, arch=" ".join(CORTEX_M4_FLAGS),
            flags=" ".join(STRICT_FLAGS + CORTEX_M4_EXTRA))  # fmt: skip
    files["README.md"] = _readme(info, low.input_shape, classes, len(low.layers))
    return files, info


def _header(shape: tuple, classes: int, arena: int, data: _Data, binary_bytes: int) -> str:
    c, h, w = shape
    return f"""/* A binary neural network exported by binsense (binsense.export.c). C99, no heap.
   model.c defines BINSENSE_MODEL_DATA before including this file; other files see the API. */
#ifndef BINSENSE_MODEL_H
#define BINSENSE_MODEL_H

#include <stdint.h>

#define MODEL_IN_C {c}
#define MODEL_IN_H {h}
#define MODEL_IN_W {w}
/* one image: C x H x W bytes, channel-planar, pixel values 0..255 */
#define MODEL_INPUT_BYTES {c * h * w}
#define MODEL_CLASSES {classes}
/* peak activation memory: one static arena of packed bits (uint32_t words), the largest
   input + output pair of a layer */
#define MODEL_ARENA_WORDS {arena}
#define MODEL_ACTIVATION_BYTES {arena * 4}
/* all const arrays below; of which the binary weights (bit streams) */
#define MODEL_WEIGHT_BYTES {data.bytes}
#define MODEL_BINARY_WEIGHT_BYTES {binary_bytes}

/* The class of one image (the first largest logit). */
int model_predict(const uint8_t *image);
/* The MODEL_CLASSES logits of one image. */
void model_logits(const uint8_t *image, float *logits);

#ifdef BINSENSE_MODEL_DATA
{chr(10).join(data.lines)}
#endif /* BINSENSE_MODEL_DATA */

#endif /* BINSENSE_MODEL_H */
"""


def _source(decls: list[str], body: list[str], runtime: str) -> str:
    return f"""/* A binary neural network exported by binsense (binsense.export.c). C99, no heap,
   float32 arithmetic only. */
#define BINSENSE_MODEL_DATA
#include "model.h"

#include <math.h>
#include <stddef.h>
{runtime}
/* ---- the layers ---- */
{chr(10).join(decls)}

static uint32_t arena[MODEL_ARENA_WORDS];

void model_logits(const uint8_t *image, float *logits) {{
{chr(10).join(body)}
}}

int model_predict(const uint8_t *image) {{
    float logits[MODEL_CLASSES];
    int k, best = 0;
    model_logits(image, logits);
    for (k = 1; k < MODEL_CLASSES; ++k)
        if (logits[k] > logits[best]) best = k;
    return best;
}}
"""


def _readme(info: CExportInfo, shape: tuple, classes: int, layers: int) -> str:
    """README.md of an export: what it is, its flash and RAM, how to build it, options."""
    c, h, w = shape
    flash = info.weight_bytes + info.code_bytes
    ram = info.activation_bytes + info.stack_bytes
    bits = info.binary_weights
    if info.target == "host":
        build = (
            "```sh\nmake            # or:\ncc " + " ".join(STRICT_FLAGS)
            + " -o model main.c model.c -lm\n./model IMAGES.raw [--logits]\n```\n\n"
            "`./model` reads raw images (`MODEL_INPUT_BYTES` each) back to back and prints "
            "one prediction (or the logits) per line."
        )  # fmt: skip
    else:
        build = (
            f"```sh\nmake            # or:\n{CORTEX_M4_CC} {' '.join(CORTEX_M4_FLAGS)} \\\n"
            f"    {' '.join(STRICT_FLAGS + CORTEX_M4_EXTRA)} \\\n    -c -o model.o model.c\n"
            "```\n\n`make` also prints the sections (`arm-none-eabi-size`); `model.su` gives "
            "each function's stack frame. Link `model.o` into your firmware: it needs no "
            "`main`, no I/O and no heap, only libc's `memset` (GCC turns the clearing of "
            "the arena into it) and libm's `fmaf` where the compiler does not inline it "
            "(GCC emits one `vfma.f32`)."
        )  # fmt: skip
    return f"""# A binary neural network in C99 (binsense export, target `{info.target}`)

`model.h` declares the API, `model.c` holds the {layers} layers and their data
(`#include "model.h"` from your code):

```c
int model_predict(const uint8_t *image);              /* the class, 0..{classes - 1} */
void model_logits(const uint8_t *image, float *logits);  /* MODEL_CLASSES floats */
```

`image`: {c} x {h} x {w} bytes (`MODEL_INPUT_BYTES` = {info.input_bytes:,}), channel-planar,
the pixel values 0..255 the model was trained on. The logits equal the binsense engine's
bit for bit. Not reentrant: one static activation arena.

## Memory (computed by the exporter)

| | bytes | |
|---|---:|---|
| flash: `const` data | {info.weight_bytes:,} | `MODEL_WEIGHT_BYTES`: all the arrays |
| of which binary weights | {info.binary_weight_bytes:,} | {bits:,} ±1 weights: {bits / 8:,.0f} B |
| flash: code and layer tables (estimate) | {info.code_bytes:,} | Thumb-2, `-O2` |
| **flash, total (estimate)** | **{flash:,}** | |
| RAM: activation arena (`.bss`) | {info.activation_bytes:,} | `MODEL_ACTIVATION_BYTES` |
| RAM: stack (estimate) | {info.stack_bytes:,} | deepest call, logits included |
| **RAM, total (estimate)** | **{ram:,}** | the input image is the caller's |

The estimates are for a Cortex-M4 (`arm-none-eabi-gcc -O2`); `arm-none-eabi-size model.o`
gives the exact `.text` (code, `const` data), `.data` and `.bss`.

## Build

{build}

Keep IEEE float semantics: no `-ffast-math` (clang: add `-ffp-contract=off`). The code
is C99 with float32 arithmetic only (`-Wdouble-promotion` is clean).

## Options (`-D`, e.g. `make DEFS="-DBINSENSE_BUILTIN_POPCOUNT"`)

- `BINSENSE_BUILTIN_POPCOUNT`: popcounts by `__builtin_popcountl` (GCC, clang): one
  instruction with `-mpopcnt` on x86 or `CNT` on AArch64. A Cortex-M4 has no popcount
  instruction (GCC calls libgcc's `__popcountsi2`): keep the portable default there
  (SWAR, Hacker's Delight 5-1, inlined).
- `BSN_POPCOUNT32(x)`: your own popcount of a `uint32_t` (an intrinsic of your core).
- `BSN_FMA(x, a, b)`: your own exact fused multiply-add `x * a + b` in float
  (default: C99 `fmaf`, one `vfma.f32` on the Cortex-M4F).
"""


def _chunks(kinds: set[str]) -> set[str]:
    """The runtime chunks of ``kinds`` (:data:`_NEEDS`), with the base."""
    return {"base"} | {chunk for kind in kinds for chunk in _NEEDS[kind]}


def export_c(
    deployed: DeployedModel,
    folder: str | os.PathLike,
    input_shape: tuple[int, int, int],
    target: str = "host",
) -> CExportInfo:
    """Write the C files of ``target`` (:data:`TARGETS`) to ``folder``, each atomically:
    ``model.h``, ``model.c``, ``README.md`` (memory figures, build line, options) and a
    ``Makefile``; ``main.c`` for the host (module docstring)."""
    files, info = generate_c(deployed, tuple(input_shape), target)
    folder = Path(folder)
    for name, text in files.items():
        atomic_write_text(folder / name, text)
    info.folder = str(folder)
    info.files = list(files)
    return info


# ---------------------------------------------------------------- build and run


def find_compiler() -> str | None:
    """The system C compiler (``$CC``, ``cc``, ``gcc`` or ``clang``: the kernels' list,
    :func:`binsense.deploy.kernels.compilers`), or ``None``."""
    return next((name for name in compilers() if shutil.which(name)), None)


def compile_c(folder: str | os.PathLike, flags: list[str] | None = None,
              out: str = "model") -> Path:  # fmt: skip
    """Compile a host export with ``cc -std=c99 -O2 -Wall -Wextra -Werror -pedantic``
    (:data:`STRICT_FLAGS`, plus ``flags``); the binary's path. One line of error when no
    compiler is found or the build fails."""
    cc = find_compiler()
    if cc is None:
        raise BinsenseError("no C compiler found (set CC or install cc/gcc/clang).")
    folder = Path(folder)
    cmd = [cc, *STRICT_FLAGS, *(flags or []), "-o", str(folder / out),
           str(folder / "main.c"), str(folder / "model.c"), "-lm"]  # fmt: skip
    _build(cmd)
    return folder / out


def _build(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["(no output)"])[0]
        raise BinsenseError(f"the C build failed: {first}")
    return done


def build_cortex_m4(folder: str | os.PathLike, flags: list[str] | None = None) -> dict[str, int]:
    """Compile an export's ``model.c`` into ``model.o`` for a Cortex-M4F as its Makefile
    does (:data:`CORTEX_M4_CC`, :data:`CORTEX_M4_FLAGS`, strict flags, plus ``flags``) and
    measure it with ``arm-none-eabi-size``: ``{"text", "data", "bss"}`` bytes and
    ``"stack"``, the sum of the frames of ``model.su`` (a bound on the deepest call
    chain: the code has no recursion). One line of error without the toolchain or when
    the build fails."""
    folder = Path(folder)
    size = CORTEX_M4_CC.replace("gcc", "size")
    if shutil.which(CORTEX_M4_CC) is None or shutil.which(size) is None:
        raise BinsenseError(f"no {CORTEX_M4_CC} / {size} found (the GNU Arm toolchain).")
    obj = folder / "model.o"
    _build([CORTEX_M4_CC, *CORTEX_M4_FLAGS, *STRICT_FLAGS, *CORTEX_M4_EXTRA, *(flags or []),
            "-c", "-o", str(obj), str(folder / "model.c")])  # fmt: skip
    line = _build([size, str(obj)]).stdout.strip().splitlines()[-1].split()
    stack = 0
    su = folder / "model.su"
    if su.is_file():
        frames = [int(f.split("\t")[1]) for f in su.read_text().splitlines() if "\t" in f]
        stack = sum(frames)
    return {"text": int(line[0]), "data": int(line[1]), "bss": int(line[2]), "stack": stack}


def run_c(binary: str | os.PathLike, images: np.ndarray, logits: bool = False) -> np.ndarray:
    """Run a compiled export on uint8 images ``(N, C, H, W)``: predictions ``(N,)`` int64,
    or logits ``(N, classes)`` float32."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "images.raw"
        raw.write_bytes(images.tobytes())
        args = [str(binary), str(raw)] + (["--logits"] if logits else [])
        done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BinsenseError(f"the compiled model failed: {done.stderr.strip()[:200]}")
    lines = done.stdout.split("\n")[: images.shape[0]]
    if logits:
        return np.array([[float(v) for v in line.split()] for line in lines], dtype=np.float32)
    return np.array([int(v) for v in lines], dtype=np.int64)


__all__ = [
    "TARGETS",
    "CExportInfo",
    "build_cortex_m4",
    "compile_c",
    "export_c",
    "find_compiler",
    "generate_c",
    "run_c",
]
