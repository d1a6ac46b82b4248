r"""Block norms: batch norm, :class:`ChannelAffine`, or none — chosen by name.

A binary block is ``conv -> [pool] -> norm -> act`` (:class:`binsense.layers.BinaryBlock`);
its norm is one of

- ``"batch_norm"``: :class:`torch.nn.BatchNorm2d` / ``1d`` (``affine=False`` freezes
  :math:`\gamma = 1, \beta = 0`, the DeSign authors' default);
- ``"channel_affine"``: :class:`ChannelAffine`, a learned scale and shift without
  statistics (the BN-free BNN of study S1's extension);
- ``"none"``: :class:`torch.nn.Identity`.

In eval mode each is a per-channel affine map, so a norm followed by a sign folds into a
threshold (:mod:`binsense.deploy.folding`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from binsense.errors import BinsenseError
from binsense.registry import Registry


class ChannelAffine(nn.Module):
    r"""A learned per-channel affine map :math:`y_c = a_c x_c + b_c` without statistics.

    The stand-in for batch norm in the BN-free BNNs of study S1's extension: followed by
    a sign it is still a per-channel threshold (:math:`x_c \ge -b_c/a_c` for
    :math:`a_c > 0`), but nothing is normalised by batch or running statistics. ``a``
    starts at ``init_scale`` — :math:`1/\sqrt{\text{fan-in}}` after a binary layer, whose
    popcount output has a standard deviation of about :math:`\sqrt{\text{fan-in}}`, so
    that the sign's straight-through window sees unit-scale inputs — and ``b`` at 0.
    The parameters are named ``scale`` and ``shift`` (not ``weight``/``bias``), so weight
    noise treats them like BN parameters: untouched unless asked.
    """

    def __init__(self, channels: int, init_scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(init_scale)))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}"


class ScalarShift(nn.Module):
    """One learned scalar added to the input, :math:`y = x + b`, starting at 0: Fixup's
    scalar bias (Zhang, Dauphin & Ma, ICLR 2019), before each conv, linear layer and
    activation of a BN-free residual branch. Named ``shift`` (not ``bias``), so weight
    noise leaves it alone, as it does BN parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.shift


class ScalarScale(nn.Module):
    """One learned scalar multiplying the input, :math:`y = s x`, starting at 1: Fixup's
    multiplier at the end of each residual branch. Named ``scale`` (not ``weight``)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _batch_norm(channels: int, *, dims: int, fan_in: int, binary: bool, affine: bool):
    return nn.BatchNorm2d(channels, affine=affine) if dims == 2 else nn.BatchNorm1d(channels)


def _channel_affine(channels: int, *, dims: int, fan_in: int, binary: bool, affine: bool):
    return ChannelAffine(channels, fan_in**-0.5 if binary else 1.0)


def _no_norm(channels: int, *, dims: int, fan_in: int, binary: bool, affine: bool):
    return nn.Identity()


def _fixup_elsewhere(channels: int, *, dims: int, fan_in: int, binary: bool, affine: bool):
    raise BinsenseError(
        "norm 'fixup' is the BN-free initialisation of the float CIFAR ResNets (resnet20 to "
        "resnet56); other models take norm batch_norm, channel_affine or none."
    )


NORMS: Registry = Registry("norm")
NORMS.add("batch_norm", _batch_norm)
NORMS.add("channel_affine", _channel_affine)
NORMS.add("none", _no_norm)
NORMS.add("fixup", _fixup_elsewhere)  # built by binsense.models.cifar's ResNets alone


def make_norm(
    name: str, channels: int, *, fan_in: int, binary: bool, dims: int = 2, affine: bool = True
) -> nn.Module:
    r"""The norm ``name`` for ``channels`` outputs of a layer with ``fan_in`` inputs.

    ``affine`` applies to batch norm after a *binary* conv (``False``: frozen at
    :math:`\gamma = 1, \beta = 0`); a :class:`ChannelAffine` starts at scale
    :math:`1/\sqrt{\text{fan-in}}` after a binary layer, 1 otherwise.
    """
    return NORMS.get(name)(channels, dims=dims, fan_in=fan_in, binary=binary, affine=affine)


def channel_view(t: Tensor, x: Tensor) -> Tensor:
    """A per-channel vector ``t`` shaped to broadcast over ``x`` ``[N, C, ...]``."""
    return t.view(1, -1, *([1] * (x.dim() - 2)))


def check_stats(bn: _BatchNorm) -> None:
    """Raise a clear error for a batch norm without running statistics."""
    if bn.running_mean is None or bn.running_var is None:
        raise BinsenseError(
            f"{bn} has no running statistics (track_running_stats=False); batch-norm "
            "quantization and folding need them."
        )


def gamma_beta(bn: _BatchNorm) -> tuple[Tensor, Tensor]:
    """(gamma, beta) detached; (1, 0) for a BN without affine parameters."""
    if bn.affine:
        return bn.weight.detach(), bn.bias.detach()
    ones = torch.ones_like(bn.running_mean)
    return ones, torch.zeros_like(ones)


def bn_sigma(bn: _BatchNorm) -> Tensor:
    r""":math:`\sigma = \sqrt{\mathrm{running\_var} + \epsilon}` per channel."""
    check_stats(bn)
    return torch.sqrt(bn.running_var.detach() + bn.eps)


__all__ = [
    "NORMS",
    "ChannelAffine",
    "ScalarScale",
    "ScalarShift",
    "bn_sigma",
    "channel_view",
    "check_stats",
    "gamma_beta",
    "make_norm",
]
