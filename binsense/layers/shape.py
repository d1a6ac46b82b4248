"""Parameter-free layers that move or reduce activations without changing their values:
ShuffleNet's channel shuffle and global pooling. The deploy step lowers both (a channel
permutation; a sum or mean over positions), and block pruning follows channels through
them, so they live here with the other layers rather than in one model family.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from binsense.errors import BinsenseError


def channel_shuffle(x: Tensor, groups: int, dim: int = 1) -> Tensor:
    """:class:`ChannelShuffle`'s arithmetic on ``(B, g*n, ...)``: the channels of ``dim``
    (``-1`` for a channels-last map, as the packed engine holds its bits) viewed as
    ``(g, n)``, transposed and flattened. Data movement only, so any dtype."""
    d = dim % x.dim()
    c = x.shape[d]
    return x.unflatten(d, (groups, c // groups)).transpose(d, d + 1).flatten(d, d + 1)


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: ``(B, g*n, H, W)`` viewed as ``(B, g, n, H, W)``,
    transposed to ``(B, n, g, H, W)`` and flattened; channel ``k*n + j`` (group ``k``,
    index ``j``) moves to position ``j*g + k``. No parameters.

    :meth:`channel_permutation` gives that map, so block pruning
    (:mod:`binsense.compress.prune`) can follow channels through the shuffle.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = int(groups)

    def channel_permutation(self, channels: int) -> Tensor:
        """``p[c]``: the output position of input channel ``c``."""
        g = self.groups
        if channels % g:
            raise BinsenseError(f"channel shuffle of {g} groups needs channels divisible by "
                                f"{g}, got {channels}.")  # fmt: skip
        c = torch.arange(channels)
        n = channels // g
        return (c % n) * g + c // n

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def global_pool(x: Tensor, mode: str) -> Tensor:
    """The sum or the mean of ``x`` over every axis after the channels."""
    dims = tuple(range(2, x.dim()))
    return x.sum(dims) if mode == "sum" else x.mean(dims)


class GlobalPool(nn.Module):
    """Global pooling over all positions: ``(B, C, H, W) -> (B, C)``, the sum or the mean.

    Channel-wise (a channel that is all zeros pools to zero), so pruning passes through it.
    """

    #: pruning may follow channels through this module (a zero channel stays zero)
    prune_passthrough: ClassVar[bool] = True

    def __init__(self, mode: Literal["sum", "mean"] = "mean") -> None:
        super().__init__()
        if mode not in ("sum", "mean"):
            raise BinsenseError(f"global pool mode must be 'sum' or 'mean', got {mode!r}.")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return global_pool(x, self.mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


__all__ = ["ChannelShuffle", "GlobalPool", "channel_shuffle", "global_pool"]
