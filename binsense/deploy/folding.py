r"""Folding rules: a (norm, activation) pair becomes integer thresholds.

Every binary block of binsense ends in an explicit pair ``norm -> act``
(:class:`binsense.layers.BinaryBlock`). In eval mode the norm is a per-channel affine map
and the activation a sign, so the pair is a per-channel compare; on the integer output of
a binary layer (:math:`y = 2P - K`, a popcount) it is an *integer* compare — the deployed
form (LCE's bit-packed output transform, FINN's MultiThreshold).

**The norm as** :math:`(\gamma, \beta, \mu, \sigma)` (:func:`norm_params64`, float64):

=======================================  =================================================
batch norm (eval mode)                   :math:`\gamma, \beta`, running mean,
                                         :math:`\sqrt{\mathrm{var} + \epsilon}`
:class:`~binsense.layers.ChannelAffine`  :math:`\gamma = a,\ \beta = b,\ \mu = 0,\ \sigma = 1`
no norm (``nn.Identity``)                :math:`\gamma = 1,\ \beta = 0,\ \mu = 0,\ \sigma = 1`
=======================================  =================================================

**Sign** (:func:`fold_sign_threshold`, the one elementwise rule): with
``sign(0) = +1`` and :math:`\sigma > 0`,
:math:`\operatorname{sign}(\gamma (x - \mu)/\sigma + \beta) = +1` iff

- :math:`\gamma > 0`: :math:`x \ge \tau`, :math:`\tau = \mu - \beta\sigma/\gamma` (``flip = +1``);
- :math:`\gamma < 0`: :math:`x \le \tau` (the inequality turns; ``flip = -1``);
- :math:`\gamma = 0`: the constant :math:`\operatorname{sign}(\beta)`: ``tau = -inf`` if
  :math:`\beta \ge 0` (always +1), ``+inf`` otherwise (``flip = +1``).

All three are :math:`\operatorname{sign}(\mathit{flip}\,(x - \tau))` (:func:`threshold_sign`;
note that :math:`\mathit{flip}\cdot\operatorname{sign}(x - \tau)` would be wrong for
:math:`\gamma < 0` at :math:`x = \tau`). On integer inputs the threshold rounds without
changing any output: :math:`\lceil\tau\rceil` for :math:`\gamma > 0`,
:math:`\lfloor\tau\rfloor` for :math:`\gamma < 0`.

**DeSign** (:func:`fold_bn_design`): ``sign(norm(x) - g T_p)`` is the sign rule with a
per-position shift :math:`\beta' = \beta - g\,T_p`, so the thresholds become one per
channel *and position class* :math:`p = (i \bmod m, j \bmod n)` (Monroy et al., JSTSP
2024) — still one integer compare per pixel.

Rules are computed in float64 from the stored parameters, so they equal the PyTorch
module in exact arithmetic; PyTorch's float32 forward can disagree only for an ``x``
within float32 rounding of a threshold (never on the small integers a popcount yields
unless a threshold sits that close to one).

Whether a (norm, activation) pair folds at all is one table,
:func:`binsense.layers.folds.fold_problem`; :func:`fold_pair` applies the rule of a pair
that does (see ``docs/architecture.md``: "A folding rule").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from binsense.errors import BinsenseError
from binsense.layers.design import DeSign, design_thresholds, get_design_kernel
from binsense.layers.folds import fold_problem
from binsense.layers.norm import ChannelAffine, channel_view, check_stats, gamma_beta

Params64 = tuple[Tensor, Tensor, Tensor, Tensor]


def bn_params64(bn: _BatchNorm) -> Params64:
    r"""``(gamma, beta, mu, sigma)`` of an inference batch norm, float64, detached."""
    check_stats(bn)
    gamma, beta = (t.double() for t in gamma_beta(bn))
    mu = bn.running_mean.detach().double()
    sigma = torch.sqrt(bn.running_var.detach().double() + bn.eps)
    return gamma, beta, mu, sigma


def norm_params64(norm: nn.Module, channels: int | None = None) -> Params64:
    r"""Any block norm as ``(gamma, beta, mu, sigma)`` in float64 (module docstring table).

    ``channels`` is needed only for a parameter-free norm (``nn.Identity``).
    """
    if isinstance(norm, _BatchNorm):
        return bn_params64(norm)
    if isinstance(norm, ChannelAffine):
        gamma = norm.scale.detach().double()
        zeros = torch.zeros_like(gamma)
        return gamma, norm.shift.detach().double(), zeros, torch.ones_like(gamma)
    if isinstance(norm, nn.Identity):
        if channels is None:
            raise BinsenseError("folding a block without norm needs its channel count.")
        ones = torch.ones(channels, dtype=torch.float64)
        return ones, torch.zeros_like(ones), torch.zeros_like(ones), ones
    raise BinsenseError(
        f"no folding rule for the norm {type(norm).__name__}; "
        "binsense folds batch norm, ChannelAffine and no norm."
    )


def fold_sign_threshold(
    gamma: Tensor, beta: Tensor, mu: Tensor, sigma: Tensor, integer_input: bool = False
) -> tuple[Tensor, Tensor]:
    r"""Elementwise sign rule: ``sign(gamma (x - mu) / sigma + beta)`` as ``(tau, flip)``.

    Broadcasts its float64 arguments (``beta`` may carry extra dimensions, e.g. one shift
    per position class for :func:`fold_bn_design`); ``flip`` has ``gamma``'s shape.
    """
    tau = mu - beta * sigma / gamma
    constant = torch.where(beta >= 0, -torch.inf, torch.inf).to(tau)
    tau = torch.where(gamma == 0, constant, tau)
    if integer_input:
        tau = torch.where(gamma > 0, torch.ceil(tau), torch.floor(tau))
    flip = torch.where(gamma < 0, -1.0, 1.0).to(gamma)
    return tau, flip


def fold_bn_sign(bn: _BatchNorm, integer_input: bool = False) -> tuple[Tensor, Tensor]:
    r"""Fold ``sign(BN(x))`` into per-channel ``(tau, flip)`` (module docstring rules).

    ``tau`` is float64 (±inf for :math:`\gamma = 0`), ``flip`` ±1 in the BN's dtype.
    """
    tau, flip = fold_sign_threshold(*bn_params64(bn), integer_input)
    return tau, flip.to(bn.running_mean.dtype)


def fold_norm_sign(
    norm: nn.Module, integer_input: bool = False, channels: int | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`fold_bn_sign` for any block norm (batch norm, ChannelAffine, none)."""
    tau, flip = fold_sign_threshold(*norm_params64(norm, channels), integer_input)
    return tau, flip.float()


def threshold_sign(x: Tensor, tau: Tensor, flip: Tensor) -> Tensor:
    r""":math:`\operatorname{sign}(\mathit{flip}\cdot(x - \tau))` per channel (dim 1), in {-1, +1}.

    ``sign(0) = +1``; with ``(tau, flip)`` from :func:`fold_bn_sign` this equals
    ``sign(bn(x))`` in eval mode. Output dtype is ``x``'s.
    """
    t, f = channel_view(tau, x), channel_view(flip, x)
    return torch.where(f * (x - t) >= 0, 1.0, -1.0).to(x.dtype)


def fold_bn_design(
    bn: nn.Module, design: DeSign | str | Tensor, integer_input: bool = False
) -> tuple[Tensor, Tensor]:
    r"""Fold ``DeSign(norm(x))`` into thresholds per channel and position class.

    :math:`\operatorname{sign}(\mathrm{BN}(x) - g\,T_p) = \operatorname{sign}(\gamma
    (x - \mu)/\sigma + \beta')` with :math:`\beta' = \beta - g\,T_p` (:math:`g = \gamma`
    when ``design`` is coupled to ``bn``, else 1), turned into ``(tau, flip)`` by
    :func:`fold_sign_threshold`: ``tau[c, i, j]`` for position class :math:`(i, j)` of
    channel :math:`c` (kernel slice :math:`c \bmod F`), shape ``(C, m, n)``, float64;
    ``flip`` ±1 per channel. ``bn`` may be any block norm (:func:`norm_params64`);
    ``design`` a :class:`DeSign` (kernel and coupling) or a kernel spec (uncoupled).
    :func:`threshold_design` applies the result.
    """
    coupled = False
    if isinstance(design, DeSign):
        if design.coupled_bn is not None and design.coupled_bn is not bn:
            raise BinsenseError("this DeSign is coupled to a different batch-norm layer.")
        coupled = design.coupled_bn is bn
        kernel = design.kernel
    else:
        kernel = get_design_kernel(design)
    gamma, beta, mu, sigma = (t.view(-1, 1, 1) for t in norm_params64(bn))
    _, m, n = kernel.shape
    t = design_thresholds(kernel.detach().cpu().double(), gamma.shape[0], m, n)
    g = gamma if coupled else 1.0
    tau, flip = fold_sign_threshold(gamma, beta - g * t.to(gamma.device), mu, sigma, integer_input)
    dtype = bn.running_mean.dtype if isinstance(bn, _BatchNorm) else torch.float32
    return tau, flip.view(-1).to(dtype)


def threshold_design(x: Tensor, tau: Tensor, flip: Tensor) -> Tensor:
    r"""Apply folded DeSign thresholds: the deployed form of BN + DeSign.

    .. math:: y_{b,c,i,j} = \operatorname{sign}\big(\mathit{flip}_c\,
              (x_{b,c,i,j} - \tau_{c,\ i \bmod m,\ j \bmod n})\big)

    ``x`` is ``(B, C, H, W)`` of any size; ``(tau, flip)`` from :func:`fold_bn_design`.
    """
    if x.dim() != 4 or tau.dim() != 3 or tau.shape[0] != x.shape[1]:
        raise BinsenseError(
            f"threshold_design expects x [B, C, H, W] and tau [C, m, n] with the same C, "
            f"got {tuple(x.shape)} and {tuple(tau.shape)}."
        )
    _, c, h, w = x.shape
    t = design_thresholds(tau.to(x.device), c, h, w).unsqueeze(0)
    f = channel_view(flip.to(x.device), x)
    return torch.where(f * (x - t) >= 0, 1.0, -1.0).to(x.dtype)


@dataclass(frozen=True)
class Thresholds:
    r"""A folded (norm, activation) pair: :math:`\operatorname{sign}(\mathit{flip}(x - \tau))`.

    ``tau`` is ``(C,)`` (sign) or ``(C, m, n)`` (one per position class, DeSign), float64;
    ``flip`` is ±1 per channel.
    """

    tau: Tensor
    flip: Tensor

    @property
    def per_position(self) -> bool:
        return self.tau.dim() == 3

    def apply(self, x: Tensor) -> Tensor:
        """The deployed activation on the norm's input ``x`` (same sign as the module)."""
        if self.per_position:
            return threshold_design(x, self.tau, self.flip)
        return threshold_sign(x, self.tau, self.flip)


def fold_pair(
    norm: nn.Module, act: nn.Module, *, integer_input: bool = False, channels: int | None = None
) -> Thresholds:
    """The :class:`Thresholds` of ``act(norm(x))`` in eval mode, in float64: the sign rule
    (:func:`fold_norm_sign`) or the DeSign rule (:func:`fold_bn_design`).

    Raises :class:`BinsenseError` for a pair that does not fold (:func:`fold_problem`;
    e.g. a ReLU: a float block).
    """
    problem = fold_problem(norm, act)
    if problem is not None:
        raise BinsenseError(
            f"no folding rule for {type(norm).__name__} followed by {type(act).__name__}: "
            f"{problem}; only binary blocks (norm then sign or DeSign) fold into thresholds."
        )
    if isinstance(act, DeSign):
        return Thresholds(*fold_bn_design(norm, act, integer_input))
    if channels is None and hasattr(norm, "num_features"):
        channels = norm.num_features
    return Thresholds(*fold_norm_sign(norm, integer_input, channels))


__all__ = [
    "Thresholds",
    "bn_params64",
    "fold_bn_design",
    "fold_bn_sign",
    "fold_norm_sign",
    "fold_pair",
    "fold_sign_threshold",
    "norm_params64",
    "threshold_design",
    "threshold_sign",
]
