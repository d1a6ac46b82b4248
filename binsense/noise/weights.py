r"""Analog weight noise: perturb a trained model's weights at inference, then restore them.

An analog in-memory accelerator stores each weight as a device conductance, and the
programmed value is off by a random amount. For a tensor :math:`W` of layer :math:`l`,
with :math:`n \sim \mathcal{N}(0, 1)` i.i.d. and a fresh draw per Monte-Carlo trial:

- additive: :math:`\tilde W = W + \eta\, s_l\, n`, with the reference scale :math:`s_l`:

  - ``"std"``: the layer's weight standard deviation (population std) — the
    signal-to-noise convention;
  - ``"max"``: the layer's :math:`\max |W|` (default) — IBM aihwkit's convention: its
    conductance converters map :math:`\max|W|` of a layer to :math:`g_{max}` and define
    programming noise in conductance units (``aihwkit.inference``; Rasch et al., AICAS
    2021; Joshi et al., Nat. Commun. 11:2473, 2020);
  - ``"channel_max"``: :math:`\max |W|` of each output channel (row of the crossbar);
  - ``"absolute"``: 1 (``eta`` is the noise std in weight units);

- multiplicative: :math:`\tilde W = W\,(1 + \eta\, n)` (no reference scale).

The noise level may be given as an SNR in dB instead of :math:`\eta`:
:math:`\eta = 10^{-\mathrm{SNR}/20}`, i.e. :math:`\mathrm{SNR} = 20\log_{10}(s_l /
\sigma_{noise})`. For ``reference="std"`` this is the usual weight SNR
:math:`10\log_{10}(\operatorname{var} W / \sigma_{noise}^2)`; for ``"max"`` it is a peak
SNR; in multiplicative mode it is the per-weight SNR :math:`|W| / \sigma_{noise}`.

The S1 study (Fagbohungbe & Qian, IEEE Access 10:127728, 2022; additive Gaussian weight
noise as in their arXiv 2011.11840) does not say which scale, grid or trial count it used
(``docs/studies.md``): the reference, the default ``"max"``, the handling of biases,
BN and binary weights below are binsense's choices.

Binary layers (:func:`binsense.layers.is_binary_layer`): by default the noise goes on the
*latent* real weights, which the layer then binarises — for sign-binarised weights such
noise only matters where it flips a sign (and, with ``scale=True``, through the
per-channel scale). With ``binarized=True`` the noise goes on the effective weight the
layer computes with, :math:`\alpha \odot \operatorname{sign}(W)` (±1 without scale): an
analog array storing binary weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from binsense.errors import BinsenseError, unknown_name
from binsense.layers import is_binary_layer
from binsense.layers.bn import bn_sigma, fold_bn_affine

Mode = Literal["additive", "multiplicative"]
Reference = Literal["std", "max", "channel_max", "absolute"]
BnForm = Literal["params", "folded"]

NOISE_MODES = ("additive", "multiplicative")
REFERENCES = ("std", "max", "channel_max", "absolute")
BN_FORMS = ("params", "folded")


def snr_db_to_eta(snr_db: float) -> float:
    r""":math:`\eta = 10^{-\mathrm{SNR}/20}` (noise std relative to the reference scale)."""
    return 10.0 ** (-float(snr_db) / 20.0)


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else an error naming the closest."""
    if value not in choices:
        raise unknown_name(what, value, choices)
    return value


class WeightNoise:
    r"""Gaussian noise on the weights of any model, applied temporarily.

    Args:
        eta: relative noise level :math:`\eta` (give this or ``snr_db``).
        snr_db: noise level as an SNR in dB, :math:`\eta = 10^{-\mathrm{SNR}/20}`.
        mode: ``"additive"`` (:math:`W + \eta s_l n`) or ``"multiplicative"``
            (:math:`W (1 + \eta n)`).
        reference: scale :math:`s_l` of additive noise: ``"std"``, ``"max"`` (default),
            ``"channel_max"`` or ``"absolute"`` (module docstring).
        include_bn: also perturb the affine parameters of batch-norm layers; their running
            statistics are never touched. Each BN tensor is its own reference.
        bn_form: with ``include_bn``: ``"params"`` perturbs :math:`\gamma, \beta`;
            ``"folded"`` perturbs the folded :math:`a = \gamma/\sigma`,
            :math:`b = \beta - a\mu` (written back through :math:`\gamma, \beta`).
        include_bias: also perturb layer biases, on the scale of the layer's weights (as a
            bias stored in the same array). Off by default, as aihwkit keeps biases
            digital by default.
        binarized: for binary layers, perturb the effective binarised weight instead of
            the latent one (module docstring).
        layers: module types whose ``weight`` is analog; binary layers are subclasses of
            :class:`torch.nn.Conv2d` / :class:`torch.nn.Linear`.

    Use :meth:`applied` as ``with noise.applied(model, seed): ...``.
    """

    def __init__(
        self,
        eta: float | None = None,
        snr_db: float | None = None,
        mode: Mode = "additive",
        reference: Reference = "max",
        include_bn: bool = False,
        binarized: bool = False,
        layers: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
        *,
        bn_form: BnForm = "params",
        include_bias: bool = False,
    ) -> None:
        if (eta is None) == (snr_db is None):
            raise BinsenseError("give exactly one of eta (relative noise level) and snr_db.")
        self.eta = float(eta) if eta is not None else snr_db_to_eta(snr_db)
        if not math.isfinite(self.eta) or self.eta < 0:
            raise BinsenseError(f"eta must be a finite number >= 0, got {self.eta}.")
        self.mode = check_choice("weight noise mode", mode, NOISE_MODES)
        self.reference = check_choice("weight noise reference", reference, REFERENCES)
        self.include_bn = bool(include_bn)
        self.bn_form = check_choice("batch-norm noise form", bn_form, BN_FORMS)
        self.include_bias = bool(include_bias)
        self.binarized = bool(binarized)
        self.layers = tuple(layers)

    def __repr__(self) -> str:
        return (
            f"WeightNoise(eta={self.eta:g}, mode={self.mode!r}, reference={self.reference!r}, "
            f"include_bn={self.include_bn}, binarized={self.binarized})"
        )

    def reference_scale(self, w: Tensor) -> Tensor:
        """:math:`s_l` of tensor ``w``: 0-d, or ``[C_out, 1, ...]`` for ``"channel_max"``."""
        w = w.detach()
        if self.reference == "std":
            return w.float().std(correction=0).to(w.dtype)
        if self.reference == "max":
            return w.abs().amax()
        if self.reference == "channel_max":
            if w.dim() == 1:
                return w.abs()
            return w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True)
        return torch.ones((), dtype=w.dtype, device=w.device)

    def perturb(self, w: Tensor, n: Tensor, scale: Tensor | None = None) -> Tensor:
        """Noisy version of ``w`` for the standard-normal draw ``n`` (same shape).

        ``scale`` overrides :meth:`reference_scale` (e.g. a bias on its layer's scale).
        """
        if self.mode == "multiplicative":
            return w * (1.0 + self.eta * n)
        s = self.reference_scale(w) if scale is None else scale
        return w + self.eta * s * n

    @contextmanager
    def applied(self, model: nn.Module, seed: int) -> Iterator[nn.Module]:
        """Perturb ``model``'s weights with draw ``seed``; restore them bit-exactly on exit.

        Noise is drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (same draw on
        every device) in module order. Every modified tensor is copied first and copied back
        on exit, also when the body raises; binary layers switched to their binarised
        weight get their quantizer and scale flag back.
        """
        gen = torch.Generator().manual_seed(int(seed))
        saved: list[tuple[Tensor, Tensor]] = []
        swapped: list[tuple[nn.Module, nn.Module | None, bool]] = []
        try:
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, self.layers):
                        self._perturb_layer(module, gen, saved, swapped)
                    elif self.include_bn and isinstance(module, _BatchNorm) and module.affine:
                        self._perturb_bn(module, gen, saved)
            yield model
        finally:
            with torch.no_grad():
                for tensor, original in reversed(saved):
                    tensor.copy_(original)
            for module, quantizer, scale in reversed(swapped):
                module.weight_quantizer = quantizer
                module.scale = scale

    @staticmethod
    def _normal(t: Tensor, gen: torch.Generator) -> Tensor:
        return torch.randn(t.shape, generator=gen).to(device=t.device, dtype=t.dtype)

    def _perturb_layer(
        self,
        module: nn.Module,
        gen: torch.Generator,
        saved: list[tuple[Tensor, Tensor]],
        swapped: list[tuple[nn.Module, nn.Module | None, bool]],
    ) -> None:
        weight = module.weight
        saved.append((weight, weight.detach().clone()))
        base = weight.detach()
        if self.binarized and is_binary_layer(module):
            base = module.binary_weight().detach()
            swapped.append((module, module.weight_quantizer, module.scale))
            module.weight_quantizer = None  # forward now uses `weight` as is
            module.scale = False
        scale = self.reference_scale(base)
        weight.copy_(self.perturb(base, self._normal(base, gen), scale))
        bias = getattr(module, "bias", None)
        if self.include_bias and bias is not None:
            saved.append((bias, bias.detach().clone()))
            bias_scale = scale.reshape(-1) if scale.dim() > 0 else scale
            bias.copy_(self.perturb(bias.detach(), self._normal(bias, gen), bias_scale))

    def _perturb_bn(
        self, bn: _BatchNorm, gen: torch.Generator, saved: list[tuple[Tensor, Tensor]]
    ) -> None:
        gamma, beta = bn.weight, bn.bias
        saved.append((gamma, gamma.detach().clone()))
        saved.append((beta, beta.detach().clone()))
        if self.bn_form == "params":
            gamma.copy_(self.perturb(gamma.detach(), self._normal(gamma, gen)))
            beta.copy_(self.perturb(beta.detach(), self._normal(beta, gen)))
            return
        a, b = fold_bn_affine(bn)
        a_noisy = self.perturb(a, self._normal(a, gen))
        b_noisy = self.perturb(b, self._normal(b, gen))
        # gamma' (x - mu) / sigma + beta' == a' x + b'
        gamma.copy_(a_noisy * bn_sigma(bn))
        beta.copy_(b_noisy + a_noisy * bn.running_mean)


__all__ = [
    "BN_FORMS",
    "NOISE_MODES",
    "REFERENCES",
    "WeightNoise",
    "check_choice",
    "snr_db_to_eta",
]
