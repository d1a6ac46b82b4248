"""Shapes and memory of a deployed program, found from the ops' plain parameters without
running a packed op (a float stage runs on the meta device): every op's output shape for
an input shape, checked field by field, and the activation memory that follows
(:meth:`binsense.deploy.program.DeployedModel.memory_bytes`).
"""

from __future__ import annotations

import torch

from binsense.deploy import ir, stage
from binsense.deploy.bits import WORD
from binsense.errors import BinsenseError

# ---------------------------------------------------------------- shapes and memory
# The per-image shape of every op's output, found from the ops' plain parameters without
# running a packed op, and the activation memory that follows from it; a file's program
# is checked against the input before any op runs (issue 24).

#: Bytes counted per activation element: int64, the widest intermediate of any op.
BYTES_PER_ELEMENT = 8


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _image(shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise BinsenseError(f"{what} takes (C, H, W) maps, got shape {shape}")
    return shape  # type: ignore[return-value]


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # type: ignore[return-value]


def _pool_side(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """PyTorch's max-pool output length (``pooling_output_shape``), 0 where it refuses."""
    if 2 * p > k:  # pad at most half of the kernel (PyTorch's check of 2-D pools)
        return 0
    out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= n + p:  # the last window starts inside the input
        out -= 1
    return out


def _meta_run(op: ir.FloatStage, shape: tuple[int, ...], workspace: bool) -> tuple[tuple, int]:
    """``(output shape, peak elements)`` of the float stage ``op`` on one image of
    ``shape``: its ops run on the meta device (no memory); the peak is the largest input
    plus output of any of them (with ``workspace``, a conv or linear layer adds 4x its
    output: the float64 temporaries of :func:`~binsense.deploy.floatops.fma` in the
    PyTorch fallback of the fixed-order float conv)."""
    x = torch.empty(1, *shape, device="meta")
    peak = 0
    for float_op in op.ops:
        try:
            with torch.no_grad():
                y = float_op.run(x)
        except Exception as e:  # whatever the op raises: the shape does not fit
            first = (str(e).splitlines() or [type(e).__name__])[0].rstrip(".")
            raise BinsenseError(
                f"{type(float_op).__name__} cannot take shape {tuple(x.shape[1:])}: {first[:200]}"
            ) from None
        work = 4 * y.numel() if workspace and isinstance(float_op, stage.Conv | stage.Linear) else 0
        peak = max(peak, x.numel() + y.numel() + work)
        x = y
    if x.dim() < 2:
        raise BinsenseError("a float stage does not give a batch of maps or vectors")
    return tuple(x.shape[1:]), peak


def op_footprint(
    op: ir.Op, shape: tuple[int, ...], workspace: bool = False
) -> tuple[tuple[int, ...], int]:
    """``(output shape, peak elements)`` of ``op`` on one image whose input has ``shape``
    (no batch axis), from the op's parameters: no packed op runs, a float stage runs on
    the meta device. Every geometry field is checked against ``shape`` (channels, fan-in,
    a map smaller than a kernel, ...): a mismatch is one :class:`BinsenseError` line, as
    is an op type this walk does not know.

    The peak counts the op's input and output elements and, with ``workspace``, the
    temporaries of the PyTorch fallback path (:meth:`DeployedModel.memory_bytes`).
    """
    shape = tuple(int(s) for s in shape)
    n_in = numel(shape)
    if isinstance(op, ir.PackedConv):
        c, h, w = _image(shape, "PackedConv")
        if c != op.in_per_group * op.groups:
            raise BinsenseError(
                f"PackedConv takes {op.in_per_group * op.groups} channels ({op.in_per_group} "
                f"per group, {op.groups} group(s)), got {c}"
            )
        (kh, kw), (sh, sw), (ph, pw) = _pair(op.kernel), _pair(op.stride), _pair(op.padding)
        hp, wp = h + 2 * ph, w + 2 * pw
        if hp < kh or wp < kw:
            raise BinsenseError(
                f"PackedConv's {kh}x{kw} kernel does not fit a {h}x{w} map (padding {ph}, {pw})"
            )
        out = (op.out_channels, (hp - kh) // sh + 1, (wp - kw) // sw + 1)
        work = 0
        if workspace:  # input bits as int64 (x3), one tap's XNOR words (x4), int32 sums
            words = -(-op.in_per_group // WORD)
            work = 3 * op.groups * words * WORD * hp * wp + numel(out)
            work += 4 * (op.out_channels // op.groups) * out[1] * out[2] * words
        return out, n_in + numel(out) + work
    if isinstance(op, ir.PackedLinear):
        if len(shape) != 1 or shape[0] != op.fan_in:
            raise BinsenseError(
                f"PackedLinear takes vectors of {op.fan_in} values, got shape {shape}"
            )
        rows, words = op.weight_words.shape
        work = 3 * words * WORD + 4 * rows * words if workspace else 0
        return (int(rows),), n_in + int(rows) + work
    if isinstance(op, ir.MaxPoolInt):
        c, h, w = _image(shape, "MaxPoolInt")
        k, d, pad, s = op.kernel, op.dilation, op.padding, op.stride
        sides = tuple(
            _pool_side(n, *g, op.ceil_mode) for n, *g in zip((h, w), k, s, pad, d, strict=True)
        )
        if min(sides) < 1:
            raise BinsenseError(
                f"MaxPoolInt (kernel {k}, stride {s}, padding {pad}, dilation {d}) does not "
                f"fit a {h}x{w} map"
            )
        out = (c, *sides)
        return out, n_in + numel(out)
    if isinstance(op, ir.Threshold):
        tau = op.tau
        if shape[:1] != tuple(tau.shape[:1]) or (tau.dim() == 3 and len(shape) != 3):
            layout = "(C, m, n) per position class" if tau.dim() == 3 else "(C,)"
            raise BinsenseError(
                f"Threshold holds {tau.shape[0]} channel thresholds {layout}, got shape {shape}"
            )
        return shape, 2 * n_in
    if isinstance(op, ir.PlanesInput):
        c, h, w = _image(shape, "PlanesInput")
        tc, _, k = op.table.shape
        if c != tc:
            raise BinsenseError(f"PlanesInput codes {tc} colour channel(s), got {c}")
        out = (c * k, h, w)
        return out, n_in + 2 * numel(out)  # the gathered bits, then the int64 ±1
    if isinstance(op, ir.FloatStage):
        out, peak = _meta_run(op, shape, workspace)
        return out, n_in + peak
    if isinstance(op, ir.ToInt8):
        return shape, 2 * n_in
    if isinstance(op, ir.FlattenOp):
        if not shape:
            raise BinsenseError("FlattenOp takes maps or vectors, got a scalar")
        return (n_in,), 2 * n_in
    if isinstance(op, ir.Shuffle):
        if not shape or shape[0] % op.groups:
            raise BinsenseError(
                f"ChannelShuffle of {op.groups} groups takes channels divisible by "
                f"{op.groups}, got shape {shape}"
            )
        return shape, 2 * n_in
    if isinstance(op, ir.ResidualOp):
        _image(shape, "ResidualOp")
        peaks = []
        s = shape
        for part in ("conv1", "threshold1", "conv2", "rest"):
            try:
                s, peak = op_footprint(getattr(op, part), s, workspace)
            except BinsenseError as e:
                raise BinsenseError(f"ResidualOp {part}: {e}") from None
            peaks.append(peak)
        short, peak_short = _meta_run(op.shortcut, shape, workspace)
        if short != s:
            raise BinsenseError(f"ResidualOp's shortcut gives shape {short}, its branch {s}")
        post, peak_post = _meta_run(op.post, s, workspace)
        # the stream (kept for the shortcut) + the largest part + branch and shortcut at the sum
        return post, n_in + max(*peaks, peak_short, peak_post) + 2 * numel(s)
    raise BinsenseError(
        f"the shape walk does not know the op type {type(op).__name__}, so its memory "
        "cannot be estimated"
    )


def checked_shape(input_shape) -> tuple[int, int, int]:
    """An image shape ``(C, H, W)`` of positive integers, else one :class:`BinsenseError`."""
    if not (isinstance(input_shape, tuple | list) and len(input_shape) == 3) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in input_shape
    ):
        raise BinsenseError(f"an image shape is (C, H, W) positive integers, got {input_shape!r}.")
    return tuple(input_shape)  # type: ignore[return-value]


def op_output_shape(op: ir.Op, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape of ``op`` (no batch axis) for inputs of ``shape``, without running
    a packed op (:func:`op_footprint`)."""
    return op_footprint(op, shape)[0]


__all__ = ["BYTES_PER_ELEMENT", "checked_shape", "numel", "op_footprint", "op_output_shape"]
