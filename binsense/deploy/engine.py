r"""The packed execution of a :class:`~binsense.deploy.program.DeployedModel`: bits flow
between binary layers.

The op list of :func:`~binsense.deploy.program.convert` is the reference: each op takes
and gives ±1 or integer NCHW tensors, so every binary layer packs its input again and
every threshold and pool runs as a PyTorch integer op. :class:`PackedEngine` runs the same
program with activations kept as **packed words** between binary layers:

- an activation is :class:`Packed`: int64 words ``(B, H, W, G * wpg)``, bit ``i`` of the
  words of group ``g`` is channel ``g * C/G + i`` (1 for +1), pad bits 0 (the layout of
  :func:`binsense.deploy.kernels.pack_input`);
- **conv + threshold** runs as one C call whose epilogue applies the integer thresholds
  and writes the next layer's packed bits (:func:`binsense.deploy.kernels.conv2d_words`
  with :func:`~binsense.deploy.kernels.fuse_threshold`), with the border correction of
  the zero padding folded into the per-position offset;
- **conv + max-pool + threshold** (the trained block pools before its norm) is the same
  fused call at the conv's resolution followed by a **pool on bits**: with thresholds
  that rise (``flip = +1``), :math:`[\max_w y_w \ge \tau] = \bigvee_w [y_w \ge \tau]`, an
  OR of the window's bits; with falling ones (``flip = -1``, a negative BN scale),
  :math:`[\max_w y_w \le \tau] = \bigwedge_w [y_w \le \tau]`, an AND. The threshold of
  each pooled position (its DeSign class) is used over its whole window, so both sides
  are equal integer for integer;
- a **binary encoder** writes its planes' bits straight from the ADC code (one table
  lookup per colour channel, OR-ed into the pixel's word) when the planes fit in one
  word; a float first stage ending in a sign quantizer packs the sign of its float32
  pre-activation in C (bit 1 iff :math:`z \ge 0`, the quantizer's forward), with no ±1
  tensor in between, a chunk of images at a time (:func:`_float_input`);
- **channel shuffle** and group layouts the next conv needs are a bit permutation
  (unpack, the module's own ``channel_shuffle`` on the channels-last bits, pack a byte
  at a time);
- **flatten + binary linear** multiplies the packed map directly: the linear layer's
  weight columns are reordered once from PyTorch's ``(C, H, W)`` flattening to the
  packed ``(H, W, word)`` order, with weight bit 1 against the zero pad bits so that
  :math:`\overline{0 \oplus 1} = 0` adds nothing.

Any other op (a residual unit, a float head, a layer after the first linear) receives a
±1 NCHW tensor unpacked from the bits and runs as in the op list. The engine gives the
op list's integers and logits exactly; :func:`binsense.deploy.program.check_exact`
compares both on every batch it checks. It runs where the C kernel runs
(:func:`binsense.deploy.kernels.runs`); elsewhere the program runs its op list.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from binsense.deploy import ir, kernels, stage
from binsense.deploy.bits import WORD, pack_bits, unpack_bits
from binsense.encoders.base import adc_code
from binsense.errors import BinsenseError
from binsense.layers.design import design_thresholds
from binsense.layers.shape import channel_shuffle


@dataclass
class Packed:
    """Packed ±1 activations: int64 ``words (B, H, W, groups * wpg)`` holding
    ``channels`` channels in ``groups`` groups of ``wpg = ceil(channels / groups / 64)``
    words each (pad bits 0)."""

    words: Tensor
    channels: int
    groups: int = 1

    def layout(self) -> int:
        """The group count of the layout, 1 where the groups fill whole words (same bits)."""
        return _layout(self.channels, self.groups)

    def bits(self) -> Tensor:
        """bool ``(B, H, W, C)`` (+1 -> True)."""
        b, h, w, _ = self.words.shape
        g = self.groups
        words = self.words.view(b, h, w, g, -1)
        return unpack_bits(words, self.channels // g, -1).reshape(b, h, w, self.channels)

    def pm1(self) -> Tensor:
        """int8 ±1 NCHW, the op list's form."""
        return torch.where(self.bits(), 1, -1).to(torch.int8).permute(0, 3, 1, 2).contiguous()


def _layout(channels: int, groups: int) -> int:
    return 1 if (channels // groups) % WORD == 0 else groups


def _pack(bits: Tensor, groups: int) -> Packed:
    """bool ``(B, H, W, C)`` -> :class:`Packed` in ``groups`` groups."""
    b, h, w, c = bits.shape
    words = pack_bits(bits.reshape(b, h, w, groups, c // groups), -1, False)
    return Packed(words.reshape(b, h, w, -1).contiguous(), c, groups)


def _regroup(p: Packed, groups: int, shuffle: int | None = None) -> Packed:
    """``p`` in the layout of ``groups`` groups, its channels first shuffled in
    ``shuffle`` groups where given (:func:`~binsense.layers.shape.channel_shuffle`, the
    trained module's own function, on the channels-last bits)."""
    if shuffle is None and p.layout() == _layout(p.channels, groups):
        return p
    bits = p.bits()
    if shuffle is not None:
        bits = channel_shuffle(bits, shuffle, dim=-1)
    return _pack(bits, groups)


class _Conv:
    """A PackedConv on packed input; its C-side tables cached per input size."""

    def __init__(self, conv: ir.PackedConv) -> None:
        self.conv = conv
        self._key: tuple | None = None
        self._tables: tuple = ()

    def tables(self, batch: int, h: int, w: int) -> tuple:
        if self._key != (batch, h, w):
            conv = self.conv
            g = conv.groups
            dims = kernels.conv_dims(
                batch, h, w, g, conv.in_per_group, conv.out_channels // g, conv.kernel,
                conv.stride, conv.padding,
            )  # fmt: skip
            bias = conv.border(h, w).to(torch.int64).reshape(conv.out_channels, -1) - conv.fan_in
            self._tables = (dims, kernels.conv_weights(conv.weight_words, g), bias)
            ho, wo = int(dims[kernels.Dim.HO]), int(dims[kernels.Dim.WO])
            self._tables += self.extra(ho, wo, bias)
            self._key = (batch, h, w)
        return self._tables

    def extra(self, ho: int, wo: int, bias: Tensor) -> tuple:
        return ()

    def __call__(self, p: Packed) -> Tensor | Packed:
        """int32 ``(B, C_out, H', W')``: the op's output (no threshold follows)."""
        dims, weights, bias = self.tables(*p.words.shape[:3])
        return kernels.conv2d_words(p.words, weights, dims, bias.to(torch.int32).contiguous())


class _FusedConv(_Conv):
    """A fused :class:`~binsense.deploy.ir.ConvUnit`: PackedConv [+ non-overlapping
    MaxPoolInt] + Threshold, one C call (and a pool on bits)."""

    def __init__(self, unit: ir.ConvUnit) -> None:
        super().__init__(unit.conv)
        self.threshold = unit.tail
        self.k = unit.pool.blocks if unit.pool is not None else 1

    def extra(self, ho: int, wo: int, bias: Tensor) -> tuple:
        k, c = self.k, self.conv.out_channels
        hp, wp = ho // k, wo // k
        tau, flip = self.threshold.tau, self.threshold.flip
        if tau.dim() == 3:  # per DeSign position class, tiled on the pooled map
            tau = design_thresholds(tau.double(), c, hp, wp).to(torch.int64)
            flip = design_thresholds(flip.double(), c, hp, wp).to(torch.int64)
        else:
            tau = tau.view(c, 1, 1).expand(c, hp, wp)
            flip = flip.view(c, 1, 1).expand(c, hp, wp)
        down = pack_bits((flip < 0).permute(1, 2, 0), -1, False).contiguous()  # (hp, wp, nw)
        if k > 1:  # each pooled position's threshold over its window; cropped rows: any
            tau = tau.repeat_interleave(k, 1).repeat_interleave(k, 2)
            flip = flip.repeat_interleave(k, 1).repeat_interleave(k, 2)
            pad = (0, wo - wp * k, 0, ho - hp * k)
            tau = F.pad(tau.unsqueeze(0).double(), pad, mode="replicate")[0].to(torch.int64)
            flip = F.pad(flip.unsqueeze(0).double(), pad, mode="replicate")[0].to(torch.int64)
        return kernels.fuse_threshold(bias, tau.reshape(c, -1), flip.reshape(c, -1)), down

    def __call__(self, p: Packed) -> Packed:
        dims, weights, _, fused, down = self.tables(*p.words.shape[:3])
        words = kernels.conv2d_words(p.words, weights, dims, threshold=fused)
        if self.k > 1:
            words = kernels.pool_bits(words, self.k, down)
        return Packed(words, self.conv.out_channels, 1)


class _PlanesWords:
    """A binary encoder's planes packed straight from the ADC code: per colour channel a
    256-entry table of its planes' bits at their place in the pixel's word."""

    def __init__(self, op: ir.PlanesInput) -> None:
        table = op.table  # bool (C, 256, K)
        c, _, k = table.shape
        self.channels = c * k
        shifted = table.to(torch.int64) << torch.arange(c * k).view(c, 1, k)
        self.lut = shifted.sum(-1)  # (C, 256): distinct bits, so the sum is the OR

    @staticmethod
    def fits(op: ir.PlanesInput) -> bool:
        """Whether the planes of a pixel fit one word."""
        return _planes(op) <= WORD

    def __call__(self, x: Tensor) -> Packed:
        codes = adc_code(x).to(torch.int64)  # (B, C, H, W)
        words = self.lut[0][codes[:, 0]]
        for ch in range(1, codes.shape[1]):
            words = words | self.lut[ch][codes[:, ch]]
        return Packed(words.unsqueeze(-1).contiguous(), self.channels, 1)


class _PackedLinearFromMap:
    """Flatten + PackedLinear on a packed map: weight columns in ``(H, W, word)`` order."""

    def __init__(self, linear: ir.PackedLinear) -> None:
        self.linear = linear
        self._key: tuple | None = None

    def __call__(self, p: Packed) -> Tensor:
        b, h, w, nw = p.words.shape
        c = p.channels
        key = (h, w, nw, c)
        if self._key != key:
            lin = self.linear
            n = lin.weight_words.shape[0]
            if lin.fan_in != c * h * w:
                raise BinsenseError(
                    f"a {c}x{h}x{w} map flattens to {c * h * w} values; the linear layer "
                    f"takes {lin.fan_in}."
                )
            bits = unpack_bits(lin.weight_words, lin.fan_in, 1).view(n, c, h, w)
            bits = bits.permute(0, 2, 3, 1)  # (N, H, W, C): the packed map's order
            words = pack_bits(bits, -1, True).reshape(n, h * w * nw)  # pad bits 1
            self._panels = kernels.pack_b(words.contiguous())
            self._key = key
        n = self.linear.weight_words.shape[0]
        counts = kernels.gemm_packed(p.words.reshape(b, -1), self._panels, n)
        return (2 * counts - self.linear.fan_in).to(torch.int64)


class PackedEngine:
    """Runs a program's op list with packed activations between binary layers (module
    docstring); ``engine(x)`` equals ``ops(x)`` exactly."""

    def __init__(self, ops: ir.OpList) -> None:
        self.ops, self.units = list(ops), ops.units
        self._steps: dict[int, object] = {}

    def _step(self, i: int, make):
        step = self._steps.get(i)
        if step is None:
            step = self._steps[i] = make()
        return step

    def _next_conv_groups(self, i: int) -> int | None:
        """Groups of the packed conv at or after op ``i`` past layout-only ops, else None."""
        for op in self.ops[i:]:
            if isinstance(op, ir.PackedConv):
                return op.groups
            if not _is_shuffle(op):
                return None
        return None

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        ops, n = self.ops, len(self.ops)
        h: Tensor | Packed = x
        i = 0
        while i < n:
            op = ops[i]
            nxt = ops[i + 1] if i + 1 < n else None
            if isinstance(op, ir.PlanesInput) and isinstance(nxt, ir.PackedConv):
                if _PlanesWords.fits(op):
                    h = self._step(i, lambda op=op: _PlanesWords(op))(h)
                else:
                    h = Packed(kernels.pack_input(op(h), nxt.groups), _planes(op), nxt.groups)
                i += 1
            elif isinstance(op, ir.FloatStage) and isinstance(nxt, ir.ToInt8):
                # (pre-activation stage or None, groups of the next conv): found once
                pre, groups = self._step(
                    i, lambda i=i, op=op: (op.pre_sign(), self._next_conv_groups(i + 2) or 1)
                )
                h = _float_input(h, op, pre, groups)
                i += 2
            elif isinstance(h, Packed) and isinstance(op, ir.PackedConv):
                h, i = self._conv(i, h)
            elif isinstance(h, Packed) and _is_shuffle(op):
                groups = self._next_conv_groups(i + 1) or 1
                h = _regroup(h, groups, op.groups)
                i += 1
            elif (
                isinstance(h, Packed)
                and isinstance(op, ir.FlattenOp)
                and (isinstance(nxt, ir.PackedLinear))
            ):
                h = _regroup(h, 1)
                h = self._step(i, lambda nxt=nxt: _PackedLinearFromMap(nxt))(h)
                i += 2
            else:
                if isinstance(h, Packed):
                    h = h.pm1()
                h = op(h)
                i += 1
        return h.pm1() if isinstance(h, Packed) else h

    def _conv(self, i: int, h: Packed) -> tuple[Tensor | Packed, int]:
        conv, unit = self.ops[i], self.units[i]
        h = _regroup(h, conv.groups)
        if unit.fused:
            step = self._step(i, lambda: _FusedConv(unit))
            return step(h), unit.tail_index + 1
        return self._step(i, lambda: _Conv(conv))(h), i + 1


FLOAT_CHUNK_BYTES = 8 << 20
"""Largest float32 activation of the float first stage, per chunk of images (bytes)."""


def _float_input(
    x: Tensor, op: ir.FloatStage, pre: tuple[stage.FloatOp, ...] | None, groups: int
) -> Packed:
    """The float first stage and its final sign, packed, computed in chunks of images.

    The stage's activations are the only float tensors of the program, and at study batch
    sizes they are large: a 32-channel 32x32 map of 250 images is 33 MB, above glibc's
    largest mmap threshold (32 MiB), so each such tensor is a fresh mapping whose every
    page faults on first touch. Chunks whose activation is at most
    :data:`FLOAT_CHUNK_BYTES` reuse heap memory that stays in cache. The chunking changes
    no bit: the stage's conv sums in the one order of :mod:`binsense.deploy.floatops`,
    image by image, so every image gets the same answer at every batch size.
    """
    ops = pre if pre is not None else op.ops
    parts: list[Tensor] = []
    start, step, channels = 0, 1, 0
    while start < x.shape[0]:
        n = min(step, x.shape[0] - start)
        y = stage.run_ops(ops, x[start : start + n].to(torch.float32)).contiguous()
        parts.append(kernels.pack_input(y, groups, sign=pre is not None))
        channels = y.shape[1]
        if start == 0:  # size the next chunks by the bytes of this one-image activation
            step = max(1, FLOAT_CHUNK_BYTES // max(4 * y.numel(), 1))
        start += n
    words = parts[0] if len(parts) == 1 else torch.cat(parts)
    return Packed(words, channels, groups)


def _is_shuffle(op: ir.Op) -> bool:
    return isinstance(op, ir.Shuffle)


def _planes(op: ir.PlanesInput) -> int:
    c, _, k = op.table.shape
    return c * k


__all__ = ["Packed", "PackedEngine"]
