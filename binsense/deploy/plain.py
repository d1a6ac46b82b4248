"""Plain values of a deployed program, checked: what an op may read from a file.

Every op of :mod:`binsense.deploy.ir` and :mod:`binsense.deploy.stage` rebuilds itself
from JSON values and tensors (``from_spec``) through these checks, so a crafted file
cannot make the loader allocate or index out of range (a leaf: no other deploy import).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from binsense.errors import BinsenseError

#: Bound on a kernel side, stride or padding read from a file.
MAX_SIDE = 1 << 16

#: Largest stride or dilation a deployed file may give a conv or pool.
MAX_STRIDE = 8


def plain_int(value, name: str, low: int = 1, high: int = 1 << 40) -> int:
    """``value`` if it is an integer (not a bool) in ``low..high``, else one line."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BinsenseError(f"{name} must be an integer from {low} to {high}, got {value!r}.")
    return value


def plain_pair(value, name: str, low: int) -> tuple[int, int]:
    """A pair of integers from ``low`` to :data:`MAX_SIDE`."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise BinsenseError(f"{name} must be a pair of integers, got {value!r}.")
    return (plain_int(value[0], name, low, MAX_SIDE), plain_int(value[1], name, low, MAX_SIDE))


def plain_float(value, name: str, *, positive: bool = False) -> float:
    """A finite number (``positive``: above 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BinsenseError(f"{name} must be a finite number, got {value!r}.")
    if positive and value <= 0:
        raise BinsenseError(f"{name} must be above 0, got {value!r}.")
    return float(value)


def plain_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise BinsenseError(f"{name} must be true or false, got {value!r}.")
    return value


def plain_choice(value, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise BinsenseError(f"{name} must be one of {', '.join(choices)}, got {value!r}.")
    return value


def plain_tensor(tensors: dict[str, Tensor], name: str, dtype: torch.dtype, shape=None) -> Tensor:
    """The tensor ``name`` of ``dtype`` (and ``shape``, if given), else one line."""
    t = tensors.get(name)
    if not isinstance(t, Tensor) or t.dtype != dtype:
        raise BinsenseError(f"tensor {name!r} must be a {dtype} tensor.")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise BinsenseError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}.")
    return t


def check_geometry(
    kernel: tuple[int, ...] | int,
    padding: tuple[int, ...] | int,
    stride: tuple[int, ...] | int = 1,
    dilation: tuple[int, ...] | int = 1,
) -> None:
    """A conv's or pool's geometry as binsense writes it: padding at most the kernel
    size (binsense pads by at most half of it), stride and dilation at most
    :data:`MAX_STRIDE`. A file read from disk is checked with it, so a crafted padding
    of 65,536 cannot make an activation map of gigabytes (``BinsenseError``)."""

    def pair(v: tuple[int, ...] | int) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    for k, p, s, d in zip(pair(kernel), pair(padding), pair(stride), pair(dilation), strict=True):
        if p > k or not 1 <= s <= MAX_STRIDE or not 1 <= d <= MAX_STRIDE:
            raise BinsenseError(
                f"geometry kernel {kernel}, padding {padding}, stride {stride}, dilation "
                f"{dilation}: padding beyond the kernel or stride / dilation above "
                f"{MAX_STRIDE} is not a binsense layer."
            )


__all__ = [
    "MAX_SIDE",
    "MAX_STRIDE",
    "check_geometry",
    "plain_choice",
    "plain_flag",
    "plain_float",
    "plain_int",
    "plain_pair",
    "plain_tensor",
]
