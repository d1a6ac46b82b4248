r"""The one binary block, and the residual unit built from two of them.

:class:`BinaryBlock` is every layer of every registry model:

.. math:: y = \mathrm{act}\big(\mathrm{norm}(\mathrm{pool}(\mathrm{conv}(x)))\big)

- ``conv``: a binary (:class:`~binsense.layers.BinaryConv2d` / ``BinaryLinear``) or float
  convolution / linear layer, grouped or not;
- ``pool``: optional (a 2x2 max-pool in BinaryNet-style networks, before the norm);
- ``norm``: batch norm, :class:`~binsense.layers.ChannelAffine` or none
  (:func:`~binsense.layers.norm.make_norm`);
- ``act``: the block's *binarisation* — a sign quantizer
  (:class:`~binsense.quant.SignQuantizer`) or :class:`~binsense.layers.DeSign` — or the
  identity (a block whose sign comes later, a classifier) or, in a float twin, ReLU.

The pair ``(norm, act)`` is explicit, so the deploy step folds it into integer thresholds
by type (:func:`binsense.deploy.fold_pair`) without guessing from module order.

:class:`ResidualUnit` is the basic block of a ResNet:

.. math:: y = \mathrm{post}\big(\mathrm{block}_2(\mathrm{block}_1(q(x))) + s(x)\big)

with :math:`q` the unit's input binarisation (``binarize``; the identity in a float
ResNet), :math:`s` a parameter-free shortcut and ``post`` the activation after the add
(hardtanh in the BNN, ReLU in the float ResNet). In the BNN, ``block_1``'s ``act`` is the
sign (or DeSign) that feeds ``block_2``, and ``block_2``'s ``act`` the identity or the
DeSign *shift* (before the add, where the DeSign authors put it).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BinaryBlock(nn.Module):
    """``act(norm(pool(conv(x))))``; see the module docstring."""

    def __init__(
        self, conv: nn.Module, norm: nn.Module, act: nn.Module, pool: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv = conv
        self.pool = pool  # registered before norm: the order of the state dict
        self.norm = norm
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.pool is not None:
            x = self.pool(x)
        return self.act(self.norm(x))


def shortcut(x: Tensor, stride: int, pad: int, mode: str) -> Tensor:
    """:class:`Shortcut`'s arithmetic: subsample by ``stride`` (average pool or slice),
    then ``pad`` zero channels (both sides for ``"avg_pool"``, at the end for ``"slice"``)."""
    if stride > 1:
        x = F.avg_pool2d(x, stride) if mode == "avg_pool" else x[:, :, ::stride, ::stride]
    if pad > 0:
        left = pad // 2 if mode == "avg_pool" else 0
        x = F.pad(x, (0, 0, 0, 0, left, pad - left))
    return x


class Shortcut(nn.Module):
    r"""Parameter-free ResNet shortcut ("option A"): subsample, then zero-pad channels.

    ``mode="avg_pool"``: :math:`s \times s` average pool and channels padded on both sides
    (the ReCU / DeSign BNN); ``mode="slice"``: every :math:`s`-th pixel and channels padded
    at the end (He et al., CVPR 2016, CIFAR ResNets).
    """

    def __init__(self, cin: int, cout: int, stride: int, mode: str = "avg_pool") -> None:
        super().__init__()
        if mode not in ("avg_pool", "slice"):
            raise ValueError(f"unknown shortcut mode {mode!r}")
        self.stride, self.pad, self.mode = stride, cout - cin, mode

    def forward(self, x: Tensor) -> Tensor:
        return shortcut(x, self.stride, self.pad, self.mode)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}, mode={self.mode!r}"


class ResidualUnit(nn.Module):
    """``post(block2(block1(binarize(x))) + shortcut(x))``; see the module docstring."""

    def __init__(
        self,
        block1: BinaryBlock,
        block2: BinaryBlock,
        shortcut: Shortcut,
        post: nn.Module,
        binarize: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.binarize = binarize if binarize is not None else nn.Identity()
        self.block1 = block1
        self.block2 = block2
        self.shortcut = shortcut
        self.post = post

    def forward(self, x: Tensor) -> Tensor:
        return self.post(self.block2(self.block1(self.binarize(x))) + self.shortcut(x))


def blocks_of(model: nn.Module) -> list[BinaryBlock]:
    """Every :class:`BinaryBlock` of ``model``, in forward order."""
    return [m for m in model.modules() if isinstance(m, BinaryBlock)]


__all__ = ["BinaryBlock", "ResidualUnit", "Shortcut", "blocks_of"]
