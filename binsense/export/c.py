r"""A deployed BNN as dependency-free C99: XNOR-popcount layers, no heap, no libm.

``export_c(deployed, "out/", input_shape=(1, 28, 28))`` writes

- ``model.h``: the API (``model_predict``, ``model_logits``, sizes as macros) and, inside
  ``#ifdef BINSENSE_MODEL_DATA`` (defined by ``model.c`` only), the model as ``const``
  arrays: binary weights packed 64 to a ``uint64_t`` word, integer thresholds ``int32_t``
  with their directions ``int8_t``, the float first layer and head parameters as exact
  hexadecimal float literals;
- ``model.c``: the layers and ``int model_predict(const uint8_t *image)`` /
  ``void model_logits(const uint8_t *image, float *logits)``; ``image`` is
  ``C x H x W`` bytes, channel-planar (the pixel values 0..255 the model was trained on);
- ``main.c``: ``./model IMAGES.raw [--logits]`` reads raw images back to back and prints
  one prediction (or the logits) per line;
- ``Makefile``.

**Layers.** A binary conv computes, at each output position,
:math:`y = 2\,\mathrm{popcount}(\overline{x \oplus w}) - K_{\text{valid}}` over the
*in-bounds* taps only: skipping a padded tap is exactly PyTorch's zero padding (no border
correction needed), with :math:`K_{\text{valid}}` the channels times the taps inside the
image. The conv, its max-pool (recomputing the window's conv outputs) and its integer
threshold are fused, so only packed bits are stored between layers: one static arena of
``uint64_t`` words holds a layer's input at one end and its output at the other
(``MODEL_ARENA_WORDS``, the peak activation memory, is printed at export). Channel
shuffles and flattening cost nothing: each layer writes its bits directly in the layout
the next layer reads (per pixel, packed along each group's input channels; or flat in
``C, H, W`` order for a fully connected layer).

**Float parts.** A float first layer is computed in float32 from a per-channel table of
the encoder's output for each of the 256 pixel values (exact: the encoder is
element-wise), summed in the one order of the engine (:mod:`binsense.deploy.floatops`:
kernel row, column, then channel, one ``fmaf`` a tap, the bias last), then max-pool, the
norm and the sign;
the head's norm on the integer popcounts is the norm's own arithmetic
(:func:`binsense.export.common.norm_affine`, checked on every integer the layer can
output). An FMA is ``BSN_FMA``, C99's ``fmaf`` by default (exact by definition; one
``vfma.f32`` on a Cortex-M4F, ``vfmadd`` with ``-mfma`` on x86; link ``-lm``): float32
arithmetic only, no float64. Do not compile with ``-ffast-math``: the float parts rely
on IEEE float32 products and sums (no product is ever added in the same expression, so
``-ffp-contract`` changes nothing). A float linear classifier on ±1 inputs sums in index
order, the engine's order: the logits equal the engine's bit for bit.

**Popcount** is portable SWAR code (Hacker's Delight 5-1); define
``BINSENSE_BUILTIN_POPCOUNT`` to use ``__builtin_popcountll`` (one instruction with
``-mpopcnt`` on x86, ``CNT`` on AArch64), or define ``BSN_POPCOUNT64(x)`` yourself (an
intrinsic of your core).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from binsense.deploy.program import (
    WORD,
    DeployedModel,
    FlattenOp,
    FloatStage,
    MaxPoolInt,
    PackedConv,
    PackedLinear,
    PlanesInput,
    Threshold,
    ToInt8,
)
from binsense.encoders.base import ADC_MAX, FloatEncoder, adc_code
from binsense.errors import BinsenseError
from binsense.export.common import (
    FLOAT_EXACT,
    Affine,
    float_probe,
    integer_probe,
    no_residual,
    norm_affine,
    op_shapes,
)
from binsense.io import atomic_write_text
from binsense.layers.binary import BinaryConv2d
from binsense.layers.block import BinaryBlock
from binsense.layers.design import DeSign
from binsense.models.compact import ChannelShuffle, GlobalPool
from binsense.quant.sign import SignQuantizer

#: Norms on integer inputs up to this magnitude are checked on every integer.
MAX_ENUMERATION = 1 << 17


@dataclass
class CExportInfo:
    """What the C export wrote, and its memory."""

    folder: str
    weight_bytes: int
    activation_bytes: int
    input_bytes: int
    binary_weights: int
    float_mismatches: int = 0
    files: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"wrote {', '.join(self.files)} to {self.folder}: weight memory "
            f"{self.weight_bytes:,} bytes ({self.binary_weights:,} binary weights), peak "
            f"activation buffer {self.activation_bytes:,} bytes (static), input image "
            f"{self.input_bytes:,} bytes"
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
        if ctype == "uint64_t":
            items = [f"0x{int(v) & (2**64 - 1):016x}u" for v in flat.astype(np.int64)]
            items = [f"UINT64_C({s[:-1]})" for s in items]
            size = 8
        elif ctype == "float":
            f32 = flat.astype(np.float32)
            if not np.all(np.isfinite(f32)):
                raise BinsenseError(f"{name}: non-finite float parameters do not export to C.")
            items = [_float_literal(float(v)) for v in f32]
            size = 4
        else:
            size = {"int32_t": 4, "int8_t": 1, "uint16_t": 2}[ctype]
            items = [str(int(v)) for v in flat]
        self.bytes += size * flat.size
        body = ",\n".join(
            "    " + ", ".join(items[i : i + 8]) for i in range(0, len(items), 8)
        )  # fmt: skip
        self.lines.append(f"static const {ctype} {name}[{flat.size}] = {{\n{body}\n}};\n")
        return name


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


def _leaves(m: nn.Module) -> list[nn.Module]:
    if isinstance(m, nn.Sequential | BinaryBlock):
        return [leaf for child in m.children() for leaf in _leaves(child)]
    return [m]


def _is_norm(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.modules.batchnorm._BatchNorm | nn.Identity)
        or type(m).__name__ == "ChannelAffine"
    )


class _Lowering:
    """The deployed program as C layers (module docstring)."""

    def __init__(self, deployed: DeployedModel, input_shape: tuple[int, int, int]) -> None:
        no_residual(deployed, "C")
        self.input_shape = tuple(input_shape)
        self.ops = list(deployed.ops.named_children())
        self.shapes = op_shapes(deployed, self.input_shape)
        self.layers: list[_Layer] = []
        self.float_mismatches = 0
        self._perm: np.ndarray | None = None
        self._lower()

    def _fail(self, name: str, what: str) -> BinsenseError:
        return BinsenseError(f"op {name}: {what} does not export to C.")

    def _lower(self) -> None:
        ops, shapes = self.ops, self.shapes
        i, shape = 0, self.input_shape
        while i < len(ops):
            name, op = ops[i]
            nxt = ops[i + 1][1] if i + 1 < len(ops) else None
            last = i  # the index of the last op this step consumes
            if isinstance(op, PlanesInput) and i == 0:
                self._add("planes", {"table": op.table.cpu().numpy()}, shape, shapes[i])
            elif isinstance(op, FloatStage) and i == 0:
                if not isinstance(nxt, ToInt8):
                    raise self._fail(name, "a float input stage that does not end in a sign")
                self._add("fconv", self._float_first(name, op, shape), shape, shapes[i])
                last = i + 1
            elif isinstance(op, PackedConv):
                if op.fan_in >= FLOAT_EXACT:
                    raise self._fail(name, f"a fan-in of {op.fan_in}")
                last, pool = i + 1, None
                if last < len(ops) and isinstance(ops[last][1], MaxPoolInt):
                    pool, last = ops[last][1].pool, last + 1
                tail = ops[last][1] if last < len(ops) else None
                params = {"op": op, "pool": _pool_params(name, pool), "conv_shape": shapes[i]}
                if isinstance(tail, Threshold):
                    params["threshold"] = tail
                    self._add("bconv", params, shape, shapes[last])
                elif isinstance(tail, FloatStage) and pool is None and last == len(ops) - 1:
                    params.update(self._conv_head(ops[last][0], tail, op, shapes[i]))
                    self._add("head_conv", params, shape, shapes[last], bits=False)
                else:
                    raise self._fail(name, "a binary conv not followed by a threshold or head")
            elif isinstance(op, PackedLinear):
                last = i + 1
                params = {"op": op}
                if isinstance(nxt, Threshold):
                    params["threshold"] = nxt
                    self._add("blin", params, shape, shapes[last])
                elif isinstance(nxt, FloatStage) and last == len(ops) - 1:
                    params["affine"] = self._int_norm(ops[last][0], nxt.body, op.fan_in,
                                                      shapes[i][0])  # fmt: skip
                    self._add("head_lin", params, shape, shapes[last], bits=False)
                else:
                    raise self._fail(name, "a binary linear layer not followed by a threshold")
            elif isinstance(op, FlattenOp):
                pass
            elif isinstance(op, ChannelShuffle):
                p = op.channel_permutation(shape[0]).numpy()
                self._perm = p if self._perm is None else p[self._perm]
            elif isinstance(op, FloatStage) and i == len(ops) - 1 and self.layers:
                self._add("head_float", self._float_head(name, op, shape), shape, shapes[i],
                          bits=False)  # fmt: skip
            else:
                raise self._fail(name, f"a {type(op).__name__} here")
            shape = shapes[last]
            i = last + 1
        if not self.layers or self.layers[-1].produces_bits:
            raise BinsenseError("the C export needs a program that ends in a head (logits).")

    def _add(self, kind: str, params: dict, in_shape: tuple, out_shape: tuple,
             bits: bool = True) -> None:  # fmt: skip
        """Append a layer; the channel shuffles met since the last one go with it."""
        layer = _Layer(kind, params, tuple(in_shape), tuple(out_shape), self._perm, bits)
        self.layers.append(layer)
        self._perm = None

    # -------------------------------------------------------------- float parts
    def _float_first(self, name: str, stage: FloatStage, in_shape: tuple) -> dict:
        leaves = _leaves(stage.body)
        k = next((n for n, m in enumerate(leaves) if isinstance(m, nn.Conv2d)), None)
        if k is None:
            raise self._fail(name, "a float input stage without a convolution")
        pre, conv, rest = leaves[:k], leaves[k], leaves[k + 1 :]
        if not all(isinstance(m, FloatEncoder | nn.Identity) for m in pre):
            raise self._fail(name, "a float input stage with layers before its conv other than "
                             "the float encoder")  # fmt: skip
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str) or conv.dilation != (1, 1):
            raise self._fail(name, "a float conv with non-zero padding modes or dilation")
        c = in_shape[0]
        # the encoder's output for every pixel value (element-wise per channel: exact)
        pixels = torch.arange(ADC_MAX + 1, dtype=torch.float32).div_(255.0)
        x = pixels.view(1, 1, 1, -1).expand(1, c, 1, ADC_MAX + 1).contiguous()
        with torch.no_grad():
            for m in pre:
                x = m.eval()(x)
            table = x[0, :, 0, :].float()
            if isinstance(conv, BinaryConv2d):
                if conv.input_quantizer is not None:
                    table = torch.where(table >= 0, 1.0, -1.0)
                weight = conv.binary_weight().detach().float()
            else:
                weight = conv.weight.detach().float()
        pool = None
        if rest and isinstance(rest[0], nn.MaxPool2d):
            pool, rest = rest[0], rest[1:]
        norm: nn.Module = nn.Identity()
        if rest and _is_norm(rest[0]):
            norm, rest = rest[0], rest[1:]
        if (
            len(rest) != 1
            or not isinstance(rest[0], SignQuantizer | DeSign)
            or (isinstance(rest[0], DeSign) and rest[0].quantizer is None)
        ):
            raise self._fail(name, "a float input stage other than encoder, conv, [max-pool], "
                             "norm, sign")  # fmt: skip
        form = norm_affine(norm, conv.out_channels, float_probe(conv.out_channels, True))
        self.float_mismatches += form.mismatches
        shift = None
        if isinstance(rest[0], DeSign):
            f, m, n = rest[0].kernel.shape
            with torch.no_grad():  # one period of the (C, H, W) map: the position classes
                shift = rest[0].thresholds(conv.out_channels, m, n).detach().float().numpy()
        conv_shape = (conv.out_channels, *_conv_out(conv, in_shape[1:]))
        return {
            "table": table.numpy(), "weight": weight.numpy(), "conv": conv, "affine": form,
            "bias": None if conv.bias is None else conv.bias.detach().float().numpy(),
            "pool": _pool_params(name, pool), "shift": shift, "conv_shape": conv_shape,
        }  # fmt: skip

    def _int_norm(self, name: str, body: nn.Sequential, bound: int, channels: int) -> Affine:
        leaves = _leaves(body)
        if len(leaves) != 1 or not _is_norm(leaves[0]):
            raise self._fail(name, "a head other than a norm after a binary layer")
        if bound <= MAX_ENUMERATION:
            probe = integer_probe(-bound, bound, channels, False)
        else:
            probe = float_probe(channels, False)
        form = norm_affine(leaves[0], channels, probe)
        self.float_mismatches += form.mismatches
        return form

    def _conv_head(self, name: str, stage: FloatStage, op: PackedConv, conv_shape: tuple
                   ) -> dict:  # fmt: skip
        leaves = _leaves(stage.body)
        if not leaves or not isinstance(leaves[0], GlobalPool):
            raise self._fail(name, "a conv head without a global pool")
        positions = conv_shape[1] * conv_shape[2]
        if op.fan_in * positions >= FLOAT_EXACT:
            raise self._fail(name, "a global pool whose sums exceed float32 integers")
        mean = leaves[0].mode == "mean"
        rest = nn.Sequential(*leaves[1:]) if len(leaves) > 1 else nn.Sequential(nn.Identity())
        bound = 0 if mean else op.fan_in * positions
        if mean:
            form = norm_affine(rest[0], conv_shape[0], float_probe(conv_shape[0], False))
            self.float_mismatches += form.mismatches
        else:
            form = self._int_norm(name, rest, bound, conv_shape[0])
        return {"affine": form, "mean": mean}

    def _float_head(self, name: str, stage: FloatStage, in_shape: tuple) -> dict:
        leaves = [m for m in _leaves(stage.body) if not isinstance(m, nn.Flatten)]
        if not leaves or type(leaves[0]) is not nn.Linear:
            raise self._fail(name, "a float head other than linear [+ norm]")
        lin = leaves[0]
        if lin.in_features != int(np.prod(in_shape)):
            raise self._fail(name, "a float head of the wrong width")
        norm = None
        if len(leaves) == 2 and _is_norm(leaves[1]):
            norm = norm_affine(leaves[1], lin.out_features, float_probe(lin.out_features, False))
            self.float_mismatches += norm.mismatches
        elif len(leaves) > 1:
            raise self._fail(name, "a float head other than linear [+ norm]")
        bias = None if lin.bias is None else lin.bias.detach().float().numpy()
        return {"weight": lin.weight.detach().float().numpy(), "bias": bias, "affine": norm}


def _conv_out(conv: nn.Conv2d, hw: tuple) -> tuple[int, int]:
    return tuple(
        (hw[d] + 2 * conv.padding[d] - conv.kernel_size[d]) // conv.stride[d] + 1 for d in (0, 1)
    )  # type: ignore[return-value]


def _pool_params(name: str, pool: nn.MaxPool2d | None) -> tuple[int, int, int] | None:
    """``(kernel, stride, padding)`` of a square max-pool, or ``None``."""
    if pool is None:
        return None

    def one(v: Any) -> int:
        if isinstance(v, tuple):
            if len(set(v)) != 1:
                raise BinsenseError(f"op {name}: only square max-pools export to C.")
            return int(v[0])
        return int(v)

    if one(pool.dilation) != 1 or pool.ceil_mode:
        raise BinsenseError(f"op {name}: max-pools with dilation or ceil_mode do not export to C.")
    stride = pool.stride if pool.stride is not None else pool.kernel_size
    return one(pool.kernel_size), one(stride), one(pool.padding)


# ---------------------------------------------------------------- layouts and code


def _layout(consumer: _Layer, producer_shape: tuple) -> tuple[str, int]:
    """``(C initializer of the bsn_layout the consumer reads, words)``."""
    perm = "NULL"
    if consumer.kind in ("bconv", "head_conv"):
        op: PackedConv = consumer.params["op"]
        c, h, w = producer_shape
        g, cg = op.groups, op.in_per_group
        wg = -(-cg // WORD)
        return f"{{0, {h}, {w}, {g}, {cg}, {wg}, {perm}}}", h * w * g * wg
    h, w = (producer_shape[1], producer_shape[2]) if len(producer_shape) == 3 else (1, 1)
    n = int(np.prod(producer_shape))
    return f"{{1, {h}, {w}, 1, {n}, 0, {perm}}}", -(-n // WORD)


RUNTIME = r"""
//@base
/* ---- popcount: portable SWAR (Hacker's Delight 5-1), or your own BSN_POPCOUNT64 ---- */
#ifndef BSN_POPCOUNT64
#if defined(BINSENSE_BUILTIN_POPCOUNT) && (defined(__GNUC__) || defined(__clang__))
#define BSN_POPCOUNT64(x) ((int32_t)__builtin_popcountll(x))
#else
static int32_t bsn_popcount64(uint64_t x) {
    x = x - ((x >> 1) & UINT64_C(0x5555555555555555));
    x = (x & UINT64_C(0x3333333333333333)) + ((x >> 2) & UINT64_C(0x3333333333333333));
    x = (x + (x >> 4)) & UINT64_C(0x0F0F0F0F0F0F0F0F);
    return (int32_t)((x * UINT64_C(0x0101010101010101)) >> 56);
}
#define BSN_POPCOUNT64(x) bsn_popcount64(x)
#endif
#endif

/* y = x * a + b rounded once (a fused multiply-add, C99's fmaf: exact; one instruction
   on an FPU with FMA). Define BSN_FMA to your core's intrinsic if fmaf is slow there. */
#ifndef BSN_FMA
#define BSN_FMA(x, a, b) fmaf((x), (a), (b))
#endif

static void bsn_clear(uint64_t *p, size_t n) {
    size_t i;
    for (i = 0; i < n; ++i) p[i] = 0;
}

static float bsn_affine(float x, float a, float b, int fused) {
    float t;
    if (fused) return BSN_FMA(x, a, b);
    t = x * a;
    return t + b;
}

/* Where a layer writes bit (c, y, x): per pixel, packed along each group's channels
   (flat = 0), or flat in C, H, W order (flat = 1). perm: channel shuffles. */
typedef struct { int flat, h, w, groups, cg, wg; const uint16_t *perm; } bsn_layout;

static void bsn_put(const bsn_layout *L, uint64_t *out, int c, int y, int x) {
    size_t i;
    if (L->perm) c = L->perm[c];
    if (L->flat) {
        i = ((size_t)c * (size_t)L->h + (size_t)y) * (size_t)L->w + (size_t)x;
        out[i >> 6] |= (uint64_t)1 << (i & 63);
    } else {
        int g = c / L->cg, j = c % L->cg;
        i = ((size_t)(y * L->w + x) * (size_t)L->groups + (size_t)g) * (size_t)L->wg
            + (size_t)(j >> 6);
        out[i] |= (uint64_t)1 << (j & 63);
    }
}

//@threshold
static int bsn_threshold(int32_t y, const int32_t *tau, const int8_t *flip, int idx) {
    return flip[idx] > 0 ? y >= tau[idx] : y <= tau[idx];
}

//@planes
/* ---- a binary encoder: ADC code -> planes, by its code table ---- */
typedef struct { int c, h, w, k, wk; const uint64_t *table; bsn_layout out; } bsn_planes;

static void bsn_run_planes(const bsn_planes *P, const uint8_t *img, uint64_t *out) {
    int y, x, c, k;
    for (y = 0; y < P->h; ++y)
        for (x = 0; x < P->w; ++x)
            for (c = 0; c < P->c; ++c) {
                int code = img[((size_t)c * P->h + y) * P->w + x];
                const uint64_t *t = P->table + ((size_t)c * 256 + code) * P->wk;
                for (k = 0; k < P->k; ++k)
                    if ((t[k >> 6] >> (k & 63)) & 1) bsn_put(&P->out, out, c * P->k + k, y, x);
            }
}

//@geom
/* ---- geometry of a conv (+ max-pool) ---- */
typedef struct {
    int in_h, in_w, cout, groups, cin_g, kh, kw, sh, sw, ph, pw;
    int conv_h, conv_w, pool_k, pool_s, pool_p, out_h, out_w;
} bsn_geom;

//@fconv
/* ---- the float first layer: encoder table, conv, [max-pool], norm, sign ---- */
typedef struct {
    bsn_geom g;
    const float *enc;   /* [C_in][256]: the encoder's output for each pixel value */
    const float *w;     /* [C_out][C_in / groups][k_h][k_w] */
    const float *bias;  /* [C_out] or NULL */
    const float *a, *b; int fused;
    const float *shift; int sm, sn;  /* DeSign (C_out, m, n) or NULL */
    bsn_layout out;
} bsn_fconv;

/* one output of the conv, in the engine's order (binsense.deploy.floatops): kernel row,
   column, then channel, acc = fma(x, w, acc) from +0, padded taps skipped, bias last */
static float bsn_fconv_at(const bsn_fconv *L, const uint8_t *img, int o, int y, int x) {
    const bsn_geom *G = &L->g;
    int c0 = (o / (G->cout / G->groups)) * G->cin_g, ci, i, j;
    float acc = 0.0f;
    for (i = 0; i < G->kh; ++i) {
        int iy = y * G->sh - G->ph + i;
        if (iy < 0 || iy >= G->in_h) continue;
        for (j = 0; j < G->kw; ++j) {
            int ix = x * G->sw - G->pw + j;
            if (ix < 0 || ix >= G->in_w) continue;
            for (ci = 0; ci < G->cin_g; ++ci) {
                int c = c0 + ci;
                float w = L->w[(((size_t)o * G->cin_g + ci) * G->kh + i) * G->kw + j];
                float v = L->enc[(size_t)c * 256 + img[((size_t)c * G->in_h + iy) * G->in_w + ix]];
                acc = BSN_FMA(v, w, acc);
            }
        }
    }
    if (L->bias) acc = acc + L->bias[o];
    return acc;
}

static void bsn_run_fconv(const bsn_fconv *L, const uint8_t *img, uint64_t *out) {
    const bsn_geom *G = &L->g;
    int o, y, x, a, b;
    for (o = 0; o < G->cout; ++o)
        for (y = 0; y < G->out_h; ++y)
            for (x = 0; x < G->out_w; ++x) {
                float v;
                if (G->pool_k == 0) {
                    v = bsn_fconv_at(L, img, o, y, x);
                } else {
                    int first = 1;
                    v = 0.0f;
                    for (a = 0; a < G->pool_k; ++a)
                        for (b = 0; b < G->pool_k; ++b) {
                            int cy = y * G->pool_s - G->pool_p + a;
                            int cx = x * G->pool_s - G->pool_p + b;
                            float u;
                            if (cy < 0 || cy >= G->conv_h || cx < 0 || cx >= G->conv_w) continue;
                            u = bsn_fconv_at(L, img, o, cy, cx);
                            if (first || u > v) v = u;
                            first = 0;
                        }
                }
                v = bsn_affine(v, L->a[o], L->b[o], L->fused);
                if (L->shift) v = v - L->shift[((size_t)o * L->sm + y % L->sm) * L->sn + x % L->sn];
                if (v >= 0.0f) bsn_put(&L->out, out, o, y, x);
            }
}

//@bconv_at
/* ---- a binary conv on packed bits, zero padding exactly as PyTorch: skipped taps ---- */
typedef struct {
    bsn_geom g;
    int wg;              /* words per group's input channels */
    const uint64_t *w;   /* [C_out][k_h][k_w][wg], padding bits 1 */
    const int32_t *tau; const int8_t *flip; int tm, tn;  /* thresholds (C_out, m, n) */
    bsn_layout out;
} bsn_bconv;

static int32_t bsn_bconv_at(const bsn_bconv *L, const uint64_t *in, int o, int y, int x) {
    const bsn_geom *G = &L->g;
    int grp = o / (G->cout / G->groups), i, j, k, taps = 0;
    int32_t pop = 0;
    const uint64_t *w = L->w + (size_t)o * G->kh * G->kw * L->wg;
    for (i = 0; i < G->kh; ++i) {
        int iy = y * G->sh - G->ph + i;
        if (iy < 0 || iy >= G->in_h) continue;
        for (j = 0; j < G->kw; ++j) {
            int ix = x * G->sw - G->pw + j;
            const uint64_t *a, *b;
            if (ix < 0 || ix >= G->in_w) continue;
            a = in + ((size_t)(iy * G->in_w + ix) * G->groups + grp) * L->wg;
            b = w + (size_t)(i * G->kw + j) * L->wg;
            for (k = 0; k < L->wg; ++k) pop += BSN_POPCOUNT64(~(a[k] ^ b[k]));
            ++taps;
        }
    }
    return 2 * pop - taps * G->cin_g;
}

//@bconv_run
static int32_t bsn_bconv_pooled(const bsn_bconv *L, const uint64_t *in, int o, int y, int x) {
    const bsn_geom *G = &L->g;
    int a, b, first = 1;
    int32_t v = 0;
    if (G->pool_k == 0) return bsn_bconv_at(L, in, o, y, x);
    for (a = 0; a < G->pool_k; ++a)
        for (b = 0; b < G->pool_k; ++b) {
            int cy = y * G->pool_s - G->pool_p + a, cx = x * G->pool_s - G->pool_p + b;
            int32_t u;
            if (cy < 0 || cy >= G->conv_h || cx < 0 || cx >= G->conv_w) continue;
            u = bsn_bconv_at(L, in, o, cy, cx);
            if (first || u > v) v = u;
            first = 0;
        }
    return v;
}

static void bsn_run_bconv(const bsn_bconv *L, const uint64_t *in, uint64_t *out) {
    const bsn_geom *G = &L->g;
    int o, y, x;
    for (o = 0; o < G->cout; ++o)
        for (y = 0; y < G->out_h; ++y)
            for (x = 0; x < G->out_w; ++x) {
                int32_t v = bsn_bconv_pooled(L, in, o, y, x);
                int idx = (o * L->tm + y % L->tm) * L->tn + x % L->tn;
                if (bsn_threshold(v, L->tau, L->flip, idx)) bsn_put(&L->out, out, o, y, x);
            }
}

//@blin_at
/* ---- a binary fully connected layer on flat bits ---- */
typedef struct {
    int n_in, n_out, words;
    const uint64_t *w;   /* [n_out][words], padding bits 1 */
    const int32_t *tau; const int8_t *flip;
    bsn_layout out;
} bsn_blin;

static int32_t bsn_blin_at(const bsn_blin *L, const uint64_t *in, int o) {
    const uint64_t *w = L->w + (size_t)o * L->words;
    int32_t pop = 0;
    int k;
    for (k = 0; k < L->words; ++k) pop += BSN_POPCOUNT64(~(in[k] ^ w[k]));
    return 2 * pop - L->n_in;
}

//@blin_run
static void bsn_run_blin(const bsn_blin *L, const uint64_t *in, uint64_t *out) {
    int o;
    for (o = 0; o < L->n_out; ++o)
        if (bsn_threshold(bsn_blin_at(L, in, o), L->tau, L->flip, o))
            bsn_put(&L->out, out, o, 0, 0);
}

//@head_lin
static void bsn_head_lin(const bsn_blin *L, const float *a, const float *b, int fused,
                         const uint64_t *in, float *logits) {
    int o;
    for (o = 0; o < L->n_out; ++o)
        logits[o] = bsn_affine((float)bsn_blin_at(L, in, o), a[o], b[o], fused);
}

//@head_conv
/* ---- a binary 1x1 conv head, global pool (sum or mean), norm ---- */
static void bsn_head_conv(const bsn_bconv *L, int mean, const float *a, const float *b,
                          int fused, const uint64_t *in, float *logits) {
    const bsn_geom *G = &L->g;
    int o, y, x;
    for (o = 0; o < G->cout; ++o) {
        int32_t sum = 0;
        float v;
        for (y = 0; y < G->conv_h; ++y)
            for (x = 0; x < G->conv_w; ++x) sum += bsn_bconv_at(L, in, o, y, x);
        v = (float)sum;
        if (mean) v = v / (float)(G->conv_h * G->conv_w);
        logits[o] = bsn_affine(v, a[o], b[o], fused);
    }
}

//@head_float
/* ---- a float linear head on ±1 bits ---- */
static void bsn_head_float(int n_in, int n_out, const float *w, const float *bias,
                           const float *a, const float *b, int fused, const uint64_t *in,
                           float *logits) {
    int o, i;
    for (o = 0; o < n_out; ++o) {
        float acc = 0.0f;
        const float *row = w + (size_t)o * n_in;
        for (i = 0; i < n_in; ++i)
            acc = ((in[i >> 6] >> (i & 63)) & 1) ? acc + row[i] : acc - row[i];
        if (bias) acc = acc + bias[o];
        logits[o] = a ? bsn_affine(acc, a[o], b[o], fused) : acc;
    }
}
"""

#: Runtime chunks each layer kind needs (a static function left unused is an error
#: under -Wall -Werror).
_NEEDS = {
    "planes": ("planes",),
    "fconv": ("geom", "fconv"),
    "bconv": ("geom", "threshold", "bconv_at", "bconv_run"),
    "blin": ("threshold", "blin_at", "blin_run"),
    "head_lin": ("blin_at", "head_lin"),
    "head_conv": ("geom", "bconv_at", "head_conv"),
    "head_float": ("head_float",),
}


def _runtime(kinds: set[str]) -> str:
    """The runtime chunks the layer ``kinds`` need, in order."""
    wanted = {"base"} | {chunk for kind in kinds for chunk in _NEEDS[kind]}
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

MAKEFILE = """# Generated by binsense. `make` builds ./model;
# `make CFLAGS+=-DBINSENSE_BUILTIN_POPCOUNT` uses the compiler's popcount.
# Keep IEEE float semantics (no -ffast-math).
CC ?= cc
CFLAGS ?= -std=c99 -O2 -Wall -Wextra -Werror
model: main.c model.c model.h
\t$(CC) $(CFLAGS) -o model main.c model.c -lm
clean:
\trm -f model
"""


def _geom(op_or_conv: Any, in_shape: tuple, conv_shape: tuple, pool, out_shape: tuple) -> str:
    if isinstance(op_or_conv, PackedConv):
        cout, groups, cin_g = op_or_conv.out_channels, op_or_conv.groups, op_or_conv.in_per_group
        (kh, kw), (sh, sw), (ph, pw) = op_or_conv.kernel, op_or_conv.stride, op_or_conv.padding
    else:
        conv = op_or_conv
        cout, groups, cin_g = conv.out_channels, conv.groups, conv.in_channels // conv.groups
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    pk, ps, pp = pool if pool is not None else (0, 1, 0)
    oh, ow = (out_shape[1], out_shape[2]) if len(out_shape) == 3 else conv_shape[1:]
    return (
        f"{{{in_shape[1]}, {in_shape[2]}, {cout}, {groups}, {cin_g}, {kh}, {kw}, {sh}, {sw}, "
        f"{ph}, {pw}, {conv_shape[1]}, {conv_shape[2]}, {pk}, {ps}, {pp}, {oh}, {ow}}}"
    )


def _threshold_data(data: _Data, prefix: str, th: Threshold) -> tuple[str, str, int, int]:
    tau, flip = th.tau.cpu().numpy(), th.flip.cpu().numpy()
    if np.abs(tau).max(initial=0) >= 1 << 31:
        raise BinsenseError(f"{prefix}: thresholds beyond int32.")
    m, n = (tau.shape[1], tau.shape[2]) if tau.ndim == 3 else (1, 1)
    return (data.array(f"{prefix}_TAU", "int32_t", tau), data.array(f"{prefix}_FLIP", "int8_t",
            flip), m, n)  # fmt: skip


def _affine_data(data: _Data, prefix: str, form: Affine) -> tuple[str, str, int]:
    return (data.array(f"{prefix}_A", "float", form.a), data.array(f"{prefix}_B", "float",
            form.b), int(form.fused))  # fmt: skip


def generate_c(
    deployed: DeployedModel, input_shape: tuple[int, int, int]
) -> tuple[dict[str, str], CExportInfo]:
    """The C files of ``deployed`` (name -> text) and their memory figures."""
    low = _Lowering(deployed, input_shape)
    data = _Data()
    decls: list[str] = []
    body: list[str] = []
    binary_weights = 0
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
        if k + 1 < len(low.layers) and low.layers[k + 1].in_perm is not None:
            perm = low.layers[k + 1].in_perm.astype(np.int64)
            layout = layout.replace("NULL", data.array(f"{p}_PERM", "uint16_t", perm))
        src = dst
        dst = "arena" if k % 2 == 0 else f"arena + MODEL_ARENA_WORDS - {n_out}"
        if layer.produces_bits:
            body.append(f"    bsn_clear({dst}, {n_out});")
        prm = layer.params
        if layer.kind == "planes":
            table = prm["table"]  # (C, 256, K) bool
            if not torch.equal(adc_code(torch.arange(256.0).div_(255.0)), torch.arange(256.0)):
                raise BinsenseError("the ADC code of pixel p / 255 is not p on this machine.")
            ch, _, kk = table.shape
            wk = -(-kk // WORD)
            padded = np.zeros((ch, 256, wk * WORD), dtype=bool)
            padded[..., :kk] = table
            weights = (padded.reshape(ch, 256, wk, WORD).astype(np.uint64)
                       << np.arange(WORD, dtype=np.uint64)).sum(-1, dtype=np.uint64)  # fmt: skip
            t = data.array(f"{p}_TABLE", "uint64_t", weights.view(np.int64))
            decls.append(f"static const bsn_planes {p} = {{{ch}, {h}, {w}, {kk}, {wk}, {t}, "
                         f"{layout}}};")  # fmt: skip
            body.append(f"    bsn_run_planes(&{p}, image, {dst});")
        elif layer.kind == "fconv":
            conv = prm["conv"]
            enc = data.array(f"{p}_ENC", "float", prm["table"])
            wt = data.array(f"{p}_W", "float", prm["weight"])
            bias = "NULL" if prm["bias"] is None else data.array(f"{p}_BIAS", "float", prm["bias"])
            a, b, fused = _affine_data(data, p, prm["affine"])
            shift, sm, sn = "NULL", 1, 1
            if prm["shift"] is not None:
                shift = data.array(f"{p}_SHIFT", "float", prm["shift"])
                sm, sn = prm["shift"].shape[1:]
            geom = _geom(conv, layer.in_shape, prm["conv_shape"], prm["pool"], layer.out_shape)
            decls.append(f"static const bsn_fconv {p} = {{{geom}, {enc}, {wt}, {bias}, "
                         f"{a}, {b}, {fused}, {shift}, {sm}, {sn}, "
                         f"{layout}}};")  # fmt: skip
            body.append(f"    bsn_run_fconv(&{p}, image, {dst});")
        elif layer.kind in ("bconv", "head_conv"):
            op: PackedConv = prm["op"]
            binary_weights += op.weight_pm1.numel()
            wt = data.array(f"{p}_W", "uint64_t", op.weight_words.cpu().numpy())
            wg = op.weight_words.shape[-1]
            geom = _geom(op, layer.in_shape, prm["conv_shape"], prm["pool"],
                         layer.out_shape if layer.kind == "bconv"
                         else prm["conv_shape"])  # fmt: skip
            if layer.kind == "bconv":
                tau, flip, tm, tn = _threshold_data(data, p, prm["threshold"])
                decls.append(f"static const bsn_bconv {p} = {{{geom}, {wg}, {wt}, {tau}, {flip}, "
                             f"{tm}, {tn}, {layout}}};")  # fmt: skip
                body.append(f"    bsn_run_bconv(&{p}, {src}, {dst});")
            else:
                a, b, fused = _affine_data(data, p, prm["affine"])
                decls.append(f"static const bsn_bconv {p} = {{{geom}, {wg}, {wt}, NULL, NULL, "
                             "1, 1, {0, 1, 1, 1, 1, 0, NULL}};")  # fmt: skip
                body.append(f"    bsn_head_conv(&{p}, {int(prm['mean'])}, {a}, {b}, {fused}, "
                            f"{src}, logits);")  # fmt: skip
        elif layer.kind in ("blin", "head_lin"):
            op: PackedLinear = prm["op"]  # type: ignore[no-redef]
            n_out, n_words = op.weight_words.shape
            binary_weights += n_out * op.fan_in
            wt = data.array(f"{p}_W", "uint64_t", op.weight_words.cpu().numpy())
            if layer.kind == "blin":
                tau, flip, _, _ = _threshold_data(data, p, prm["threshold"])
                decls.append(f"static const bsn_blin {p} = {{{op.fan_in}, {n_out}, {n_words}, "
                             f"{wt}, {tau}, {flip}, {layout}}};")  # fmt: skip
                body.append(f"    bsn_run_blin(&{p}, {src}, {dst});")
            else:
                a, b, fused = _affine_data(data, p, prm["affine"])
                decls.append(f"static const bsn_blin {p} = {{{op.fan_in}, {n_out}, {n_words}, "
                             f"{wt}, NULL, NULL, {{0, 1, 1, 1, 1, 0, NULL}}}};")  # fmt: skip
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
    header = _header(low.input_shape, classes, arena, data)
    runtime = _runtime({layer.kind for layer in low.layers})
    source = _source(decls, body, runtime)
    info = CExportInfo("", data.bytes, arena * 8, c * h * w, binary_weights, low.float_mismatches)
    files = {"model.h": header, "model.c": source, "main.c": MAIN_C, "Makefile": MAKEFILE}
    return files, info


def _header(shape: tuple, classes: int, arena: int, data: _Data) -> str:
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
/* peak activation memory: one static arena of packed bits */
#define MODEL_ARENA_WORDS {arena}
#define MODEL_ACTIVATION_BYTES {arena * 8}
/* all const arrays below */
#define MODEL_WEIGHT_BYTES {data.bytes}

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
    return f"""/* A binary neural network exported by binsense (binsense.export.c). C99, no heap. */
#define BINSENSE_MODEL_DATA
#include "model.h"

#include <math.h>
#include <stddef.h>
{runtime}
/* ---- the layers ---- */
{chr(10).join(decls)}

static uint64_t arena[MODEL_ARENA_WORDS];

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


def export_c(
    deployed: DeployedModel, folder: str | os.PathLike, input_shape: tuple[int, int, int]
) -> CExportInfo:
    """Write ``model.h``, ``model.c``, ``main.c`` and a ``Makefile`` to ``folder``
    (module docstring); each file atomically."""
    files, info = generate_c(deployed, tuple(input_shape))
    folder = Path(folder)
    for name, text in files.items():
        atomic_write_text(folder / name, text)
    info.folder = str(folder)
    info.files = list(files)
    return info


# ---------------------------------------------------------------- build and run


def find_compiler() -> str | None:
    """The system C compiler (``$CC``, ``cc``, ``gcc`` or ``clang``), or ``None``."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def compile_c(folder: str | os.PathLike, flags: list[str] | None = None,
              out: str = "model") -> Path:  # fmt: skip
    """Compile an export with ``cc -std=c99 -O2 -Wall -Werror`` (plus ``flags``); the
    binary's path. One line of error when no compiler is found or the build fails."""
    cc = find_compiler()
    if cc is None:
        raise BinsenseError("no C compiler found (set CC or install cc/gcc/clang).")
    folder = Path(folder)
    cmd = [cc, "-std=c99", "-O2", "-Wall", "-Werror", *(flags or []), "-o", str(folder / out),
           str(folder / "main.c"), str(folder / "model.c"), "-lm"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["(no output)"])[0]
        raise BinsenseError(f"the C build failed: {first}")
    return folder / out


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
    "CExportInfo",
    "compile_c",
    "export_c",
    "find_compiler",
    "generate_c",
    "run_c",
]
