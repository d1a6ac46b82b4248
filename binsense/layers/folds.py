"""Which (norm, activation) pairs of a :class:`~binsense.layers.BinaryBlock` fold into
integer thresholds: the one table that the deploy step (``convert``, ``Threshold``,
``fold_pair`` in :mod:`binsense.deploy`) and the size summary
(:mod:`binsense.compress.summary`) consult. It lives with the layers, so asking costs no
import of the deploy package.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from binsense.layers.design import DeSign
from binsense.layers.norm import ChannelAffine
from binsense.quant.sign import SignQuantizer

#: The norms that fold: per-channel affine maps in eval mode
#: (:func:`binsense.deploy.folding.norm_params64`).
FOLDABLE_NORMS = (_BatchNorm, ChannelAffine, nn.Identity)


def fold_problem(norm: nn.Module, act: nn.Module) -> str | None:
    """Why ``act(norm(x))`` does not deploy as integer compares, or None when it does.

    The one answer to "does this (norm, act) pair fold": a norm of
    :data:`FOLDABLE_NORMS` followed by a sign (:class:`~binsense.quant.SignQuantizer`) or
    a DeSign that signs. :func:`~binsense.deploy.program.convert` (through
    :class:`~binsense.deploy.ir.Threshold`), the size summary
    (:mod:`binsense.compress.summary`) and :func:`~binsense.deploy.folding.fold_pair`
    all consult it.
    """
    if not isinstance(norm, FOLDABLE_NORMS):
        return f"{type(norm).__name__} is not a per-channel affine norm"
    if isinstance(act, DeSign):
        if act.quantizer is None:
            return (
                "this DeSign only shifts (quantizer=None): the sign comes later (after a "
                "residual add), so the pair does not fold on its own"
            )
        return None
    if isinstance(act, SignQuantizer):
        return None
    return f"{type(act).__name__} is not a sign"


def pair_folds(norm: nn.Module, act: nn.Module) -> bool:
    """Whether ``act(norm(x))`` deploys as integer compares (:func:`fold_problem`)."""
    return fold_problem(norm, act) is None


__all__ = ["FOLDABLE_NORMS", "fold_problem", "pair_folds"]
