r"""Batch-norm quantization and folding: k-bit parameters, affine form, integer thresholds.

Inference batch norm, per channel, with :math:`\sigma = \sqrt{\mathrm{var} + \epsilon}`:

.. math:: \mathrm{BN}(x) = \gamma\,\frac{x - \mu}{\sigma} + \beta = a\,x + b, \qquad
          a = \gamma/\sigma,\quad b = \beta - a\,\mu

Post-training quantization (:func:`quantize_bn`, :func:`bn_quantized`) rounds the
parameters to signed k-bit fixed point (:func:`binsense.quant.fixed.quantize_fixed`, each
tensor with its own automatic fractional bits) in one of three *targets*:

- ``"raw"``: :math:`\gamma, \beta, \mu, \sigma` each quantized;
- ``"affine"``: the folded :math:`a` and :math:`b` quantized;
- ``"threshold"``: for a BN followed by a sign, the folded threshold :math:`\tau`
  quantized (see :func:`binsense.deploy.fold_bn_sign`); for a BN followed by a DeSign, the
  folded threshold per channel and position class,
  :math:`\tau_{c,p} = \mu_c + \sigma_c (g_c T_p - \beta_c)/\gamma_c`
  (:func:`binsense.deploy.fold_bn_design`), quantized as one tensor: the dither kernel
  folds into the threshold *before* quantization, as it does when deployed; a BN followed
  by neither (e.g. the classifier's) gets the ``"affine"`` treatment.

*Scale* (``scale=``, :data:`BN_SCALES`): the automatic fractional bits
:math:`f = \lfloor\log_2((2^{k-1}-1)/\max|t|)\rfloor` of a quantized per-channel tensor
:math:`t` (:math:`\gamma`, :math:`\beta`, :math:`a`, :math:`\tau`, ...) are chosen

- ``"tensor"`` (the default): once for the whole tensor, one binary point per layer. This
  is what binsense has always done, and the S0 study results depend on it, so it stays the
  default. Its weakness: one channel with a huge value sets the step of all the others.
  A nearly dead channel (:math:`\gamma \approx 10^{-4}`) has
  :math:`|\tau| = |\mu - \beta\sigma/\gamma|` of order :math:`10^4` (3.3e4 in
  ``tests/test_bn_quant.py``), which sets the step to :math:`2^9 = 512` at 8 bits
  (:math:`2^{13}` at 4 bits): every other channel's threshold (:math:`|\tau| < 50`
  there) rounds to 0, and its sign decisions flip wherever the input lies between the
  true and the rounded threshold (there, with inputs
  :math:`x \sim \mathcal{N}(\mu, (2\sigma)^2)`: 28 % of them at 4 and at 8 bits; per
  channel: 0.06 % at 8 bits, all within one step of the threshold);
- ``"channel"``: each channel its own :math:`f_c` from :math:`|t_c|` (per-channel
  scaling, as in per-channel weight quantization, Krishnamoorthi 2018), so every channel
  keeps :math:`k` significant bits: the fix for dead or outlier channels. A deployment
  then needs one binary point (a shift) per channel.

The S0 paper (Andreo-Oliver et al., Sci. Rep. 2025) quantizes "the batch-norm parameters"
without saying which or in which format; the three targets and the fixed-point format are
binsense's choices (``docs/studies.md``). Quantized parameters are written back into
the ordinary :class:`torch.nn.BatchNorm2d` (with ``eps`` set to 0 and the running
statistics rewritten so that PyTorch's BN computes exactly the quantized form), so every
model keeps working unchanged; the results are meant for inference (eval mode).

:class:`QuantizedBatchNorm` is the trainable counterpart (quantization-aware training of
the affine form with a straight-through estimator).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from binsense.errors import BinsenseError, unknown_name
from binsense.layers.block import BinaryBlock, ResidualUnit, blocks_of
from binsense.layers.design import DeSign
from binsense.layers.norm import bn_sigma, channel_view, check_stats, gamma_beta
from binsense.quant.fixed import (
    FLOAT_BITS,
    auto_frac_bits,
    auto_frac_bits_tensor,
    check_bits,
    quantize_fixed,
    quantize_fixed_ste,
)
from binsense.quant.sign import SignQuantizer

BN_TARGETS = ("raw", "affine", "threshold")
"""Quantization targets accepted by :func:`quantize_bn`."""

BN_SCALES = ("tensor", "channel")
"""Fixed-point scalings accepted by :func:`quantize_bn` (module docstring)."""


def _check_target(target: str) -> str:
    if target not in BN_TARGETS:
        raise unknown_name("batch-norm quantization target", target, BN_TARGETS)
    return target


def _check_scale(scale: str) -> str:
    if scale not in BN_SCALES:
        raise unknown_name("batch-norm quantization scale", scale, BN_SCALES)
    return scale


def fold_bn_affine(bn: _BatchNorm) -> tuple[Tensor, Tensor]:
    r"""The inference BN as ``(a, b)`` with :math:`\mathrm{BN}(x) = a x + b`."""
    gamma, beta = gamma_beta(bn)
    a = gamma / bn_sigma(bn)
    return a, beta - a * bn.running_mean.detach()


def _batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """Float batch-norm layers of ``model`` (QuantizedBatchNorm is already quantized)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, _BatchNorm) and not isinstance(m, QuantizedBatchNorm)
    ]


def _sign_fed(model: nn.Module) -> set[int]:
    """ids of BN layers that are the norm of a block whose activation is a sign quantizer
    (the explicit (norm, act) pair of :class:`~binsense.layers.BinaryBlock`)."""
    return {
        id(b.norm)
        for b in blocks_of(model)
        if isinstance(b.norm, _BatchNorm) and isinstance(b.act, SignQuantizer)
    }


class BnPairingWarning(UserWarning):
    """``quantize_bn(..., "threshold")`` gave the affine form to batch norms that are not
    the norm of a :class:`~binsense.layers.BinaryBlock`, in a model that binarises
    activations outside its blocks: a sign may follow them, unseen (:func:`_unpaired`)."""


def _stray_signs(model: nn.Module) -> list[str]:
    """Names of the sign modules (:class:`SignQuantizer`, :class:`DeSign`) of ``model``
    that binarise activations outside the explicit pairs: not (part of) a
    :class:`~binsense.layers.BinaryBlock`'s ``act``, not a
    :class:`~binsense.layers.block.ResidualUnit`'s ``binarize`` (the stream's sign), not
    a binary layer's ``weight_quantizer`` (weights, not activations)."""
    known: set[int] = set()
    for m in model.modules():
        owned = [getattr(m, "weight_quantizer", None)]
        if isinstance(m, BinaryBlock):  # its act (and a DeSign's quantizer)
            owned.append(m.act)
        if isinstance(m, ResidualUnit):
            owned.append(m.binarize)
        for o in owned:
            if isinstance(o, nn.Module):
                known.update(id(x) for x in o.modules())
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, SignQuantizer | DeSign) and id(m) not in known
    ]


def _unpaired(model: nn.Module, plan: list[tuple[_BatchNorm, str, DeSign | None]]) -> None:
    """Warn once (:class:`BnPairingWarning`) when the ``"threshold"`` target gives the
    affine form to batch norms outside every :class:`~binsense.layers.BinaryBlock` while
    the model has a sign outside its blocks: binsense pairs a norm with its sign only
    through the block (never by guessing from module order), so a user's
    ``nn.Sequential(bn, sign)`` would otherwise get ``a x + b`` quantized, whose signs
    differ from the quantized threshold compare (thousands of flips at 2 bits), without
    a word. A norm outside the blocks in a model without such a sign (a classifier's)
    gets the affine form silently: nothing binarises its output."""
    in_blocks = {id(b.norm) for b in blocks_of(model)}
    outside = [bn for bn, form, _ in plan if form == "affine" and id(bn) not in in_blocks]
    if not outside:
        return
    signs = _stray_signs(model)
    if not signs:
        return
    names = {id(m): name or "(the model)" for name, m in model.named_modules()}
    shown = ", ".join(names[id(bn)] for bn in outside[:4]) + (", ..." if len(outside) > 4 else "")
    warnings.warn(
        f"quantize_bn(target='threshold'): {len(outside)} batch norm(s) ({shown}) are not "
        f"the norm of a BinaryBlock while the model has a sign outside its BinaryBlocks "
        f"({', '.join(signs[:4])}{', ...' if len(signs) > 4 else ''}), so binsense cannot "
        "tell whether a sign follows them: they got the affine form (a x + b quantized), "
        "whose signs can differ from quantized thresholds; put each (norm, sign) pair in "
        "a BinaryBlock(conv, norm, act) to quantize its threshold.",
        BnPairingWarning,
        stacklevel=3,
    )


def _design_fed(model: nn.Module) -> dict[int, DeSign]:
    """id(BN) -> the DeSign (with a sign quantizer) that binarises that BN's output."""
    return {
        id(b.norm): b.act
        for b in blocks_of(model)
        if isinstance(b.norm, _BatchNorm)
        and isinstance(b.act, DeSign)
        and b.act.quantizer is not None
    }


def _coupled(model: nn.Module) -> dict[int, list[nn.Module]]:
    """id(BN) -> the modules of ``model`` that read that BN's gamma (``coupled_bn``).

    A :class:`binsense.layers.design.DeSign` with ``bn=...`` scales its thresholds by its
    BN's *current* ``weight``, so that weight must keep its meaning (gamma).
    """
    users: dict[int, list[nn.Module]] = {}
    for m in model.modules():
        bn = getattr(m, "coupled_bn", None)
        if isinstance(bn, _BatchNorm):
            users.setdefault(id(bn), []).append(m)
    return users


def _axis(scale: str) -> int | None:
    """``quantize_fixed`` axis of a per-channel parameter vector: one ``f`` per channel or not."""
    return 0 if scale == "channel" else None


def _fixed(x: Tensor, bits: int, scale: str = "tensor") -> Tensor:
    return quantize_fixed(x.float(), bits, axis=_axis(scale)).to(x.dtype)


@torch.no_grad()
def _write_back(bn: _BatchNorm, gamma: Tensor, beta: Tensor, mu: Tensor, var: Tensor) -> None:
    """Set BN so that it computes ``gamma * (x - mu) / sqrt(var) + beta`` (eps = 0)."""
    if bn.affine:
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)
    bn.running_mean.copy_(mu)
    bn.running_var.copy_(var)
    bn.eps = 0.0


def _quantize_raw(bn: _BatchNorm, bits: int, scale: str = "tensor") -> None:
    gamma, beta = gamma_beta(bn)
    sigma = bn_sigma(bn)
    # A sigma that rounds to 0 is set to one step (a division by zero is not a format).
    if scale == "channel":
        lsb = torch.exp2(-auto_frac_bits_tensor(sigma.float(), bits, axis=0)).to(sigma.dtype)
    else:
        lsb = 2.0 ** -auto_frac_bits(sigma, bits)
    sigma_q = _fixed(sigma, bits, scale).clamp_min(lsb)
    q = [_fixed(t, bits, scale) for t in (gamma, beta, bn.running_mean)]
    _write_back(bn, *q, sigma_q**2)


def _quantize_affine(bn: _BatchNorm, bits: int, scale: str = "tensor") -> None:
    a, b = fold_bn_affine(bn)
    ones = torch.ones_like(a)
    _write_back(bn, _fixed(a, bits, scale), _fixed(b, bits, scale), torch.zeros_like(a), ones)


def _quantize_threshold(bn: _BatchNorm, bits: int, scale: str = "tensor") -> None:
    from binsense.deploy.folding import fold_bn_sign  # the deploy rule (deploy imports layers)

    tau, flip = fold_bn_sign(bn)
    finite = torch.isfinite(tau)
    tau_q = tau.clone()
    if finite.any():
        tau_q[finite] = quantize_fixed(tau[finite].float(), bits, axis=_axis(scale)).double()
    dtype = bn.running_mean.dtype
    ones = torch.ones_like(flip)
    # BN(x) = flip * (x - tau_q): same sign as the quantized threshold compare.
    _write_back(bn, flip, torch.zeros_like(flip), tau_q.to(dtype), ones)


@torch.no_grad()
def _quantize_design_threshold(
    bn: _BatchNorm, design: DeSign, bits: int, scale: str = "tensor"
) -> None:
    """BN + DeSign as sign(flip * (x - tau_q[c, p])), tau folded then quantized.

    The BN is rewritten to ``flip * x`` and the DeSign to an uncoupled one whose kernel
    (one slice per channel) is ``flip * tau_q``: ``sign(flip x - flip tau_q)`` is the
    deployed compare. Both are restored by :func:`bn_quantized`.
    """
    from binsense.deploy.folding import fold_bn_design  # the deploy rule (deploy imports layers)

    tau, flip = fold_bn_design(bn, design)
    finite = torch.isfinite(tau)
    tau_q = tau.clone()
    if finite.any():
        q = quantize_fixed(tau.float(), bits, axis=_axis(scale)).double()
        tau_q[finite] = q[finite]
    dtype = bn.running_mean.dtype
    zeros = torch.zeros_like(flip)
    _write_back(bn, flip, zeros, zeros.to(dtype), torch.ones_like(flip))
    design.coupled_bn = None
    design.kernel = (flip.double().view(-1, 1, 1) * tau_q).to(design.kernel)


def _plan(model: nn.Module, target: str) -> list[tuple[_BatchNorm, str, DeSign | None]]:
    """(layer, form, the DeSign it feeds for "design_threshold") for every float BN,
    validated before anything is changed."""
    fed = _sign_fed(model) if target == "threshold" else set()
    designs = _design_fed(model) if target == "threshold" else {}
    coupled = _coupled(model)
    plan = []
    for bn in _batch_norms(model):
        check_stats(bn)
        form = "raw" if target == "raw" else "threshold" if id(bn) in fed else "affine"
        if id(bn) in designs:
            form = "design_threshold"
        if form not in ("raw", "design_threshold") and id(bn) in coupled:
            raise BinsenseError(
                f"{bn} is coupled to a DeSign activation (its gamma scales the dither "
                f"thresholds), so its {form} form cannot be written back; use target 'raw' "
                "or an uncoupled DeSign."
            )
        if form == "affine" and not bn.affine:
            raise BinsenseError(
                f"{bn} has no affine parameters, so its folded affine form cannot be written "
                "back; use target 'raw'."
            )
        plan.append((bn, form, designs.get(id(bn))))
    return plan


_QUANTIZE_FORMS = {
    "raw": _quantize_raw,
    "affine": _quantize_affine,
    "threshold": _quantize_threshold,
}


def quantize_bn(
    model: nn.Module, bits: int, target: str = "raw", scale: str = "tensor"
) -> nn.Module:
    r"""Quantize every batch-norm layer of ``model`` in place (post-training); returns it.

    Args:
        model: any model; its :class:`torch.nn.BatchNorm1d`/``2d``/``3d`` layers (with
            running statistics) are quantized, :class:`QuantizedBatchNorm` layers skipped.
        bits: fixed-point width 2..24; 32 leaves the model untouched (float baseline).
        target: ``"raw"``, ``"affine"`` or ``"threshold"`` (module docstring). A BN "is
            followed by a sign" when it is the ``norm`` of a
            :class:`~binsense.layers.BinaryBlock` whose ``act`` is a
            :class:`binsense.quant.SignQuantizer` (the explicit pair, never guessed from
            module order). A BN followed by a :class:`~binsense.layers.design.DeSign`
            with a sign quantizer gets, with ``"threshold"``, its folded thresholds per
            position class quantized (module docstring; the DeSign is rewritten too,
            coupled or not), with ``"affine"`` the affine form; a BN whose gamma a DeSign
            reads (``DeSign(bn=...)``) accepts only ``"raw"``, or ``"threshold"`` when
            that DeSign is its block's sign (a :class:`BinsenseError` otherwise: the
            other forms rewrite gamma). A BN outside every BinaryBlock gets the
            affine form; where the model also binarises activations outside its blocks
            (a ``nn.Sequential(bn, sign)``), a sign may follow that BN unseen, so
            ``"threshold"`` then warns once (:class:`BnPairingWarning`) naming the BNs.
        scale: ``"tensor"`` (default: one set of automatic fractional bits per quantized
            tensor, as binsense has always done, so the S0 results are unchanged) or
            ``"channel"`` (each channel its own fractional bits: the fix for a nearly dead
            channel whose huge threshold or parameter would otherwise coarsen every other
            channel's grid); module docstring. Applies to all three targets.

    Details (binsense's choices): in ``"raw"`` a :math:`\sigma` rounding to 0 becomes one
    quantization step; in ``"threshold"`` the thresholds of constant channels
    (:math:`\gamma = 0`, ``tau = ±inf``) stay infinite, and the rewritten BN outputs
    ``flip * (x - tau_q)``: only its sign is meaningful. The quantized layers have
    ``eps = 0`` and are for eval mode (PyTorch refuses ``eps = 0`` in training mode; use
    :class:`QuantizedBatchNorm` to train quantized). Use :func:`bn_quantized` to quantize
    temporarily.
    """
    _check_target(target)
    _check_scale(scale)
    if check_bits(bits) == FLOAT_BITS:
        return model
    plan = _plan(model, target)
    if target == "threshold":
        _unpaired(model, plan)
    for bn, form, design in plan:
        if design is not None:
            _quantize_design_threshold(bn, design, bits, scale)
        else:
            _QUANTIZE_FORMS[form](bn, bits, scale)
    return model


def _bn_tensors(bn: _BatchNorm) -> list[Tensor]:
    tensors = [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    return [t for t in tensors if t is not None]


@contextmanager
def bn_quantized(
    model: nn.Module, bits: int, target: str = "raw", scale: str = "tensor"
) -> Iterator[nn.Module]:
    """Context manager: :func:`quantize_bn` on entry, bit-exact restore on exit.

    Every parameter, running statistic and ``eps`` of the affected layers is copied on
    entry and copied back on exit, also when the body raises.
    """
    _check_target(target)
    _check_scale(scale)
    if check_bits(bits) == FLOAT_BITS:  # float baseline: nothing to change or restore
        yield model
        return
    saved = [
        (bn, bn.eps, [t.detach().clone() for t in _bn_tensors(bn)]) for bn in _batch_norms(model)
    ]
    designs = [(d, d.kernel, d.coupled_bn) for d in model.modules() if isinstance(d, DeSign)]
    try:
        yield quantize_bn(model, bits, target, scale)
    finally:
        with torch.no_grad():
            for bn, eps, copies in saved:
                bn.eps = eps
                for t, c in zip(_bn_tensors(bn), copies, strict=True):
                    t.copy_(c)
            for design, kernel, coupled in designs:
                design.kernel, design.coupled_bn = kernel, coupled


class QuantizedBatchNorm(_BatchNorm):
    r"""Batch norm computed in the quantized affine form, trainable (QAT) with an STE.

    .. math:: y = Q_k(a)\,x + Q_k(b),\quad a = \frac{\gamma}{\sqrt{v + \epsilon}},\quad
              b = \beta - a\,m

    with :math:`(m, v)` the batch statistics in training (running statistics updated as
    in :class:`torch.nn.BatchNorm2d`) and the running statistics in eval mode, and
    :math:`Q_k` :func:`binsense.quant.fixed.quantize_fixed_ste` (automatic fractional bits
    per tensor; gradients pass straight through). This is BN folding for
    quantization-aware training as in Jacob et al., CVPR 2018, without the convolution.
    With ``qat=False`` training runs in float and only eval mode is quantized. Works for
    inputs ``[N, C]``, ``[N, C, L]``, ``[N, C, H, W]``, ...; its state dict is that of a
    BatchNorm, so :meth:`from_batchnorm` converts a trained layer.
    """

    def __init__(
        self,
        num_features: int,
        bits: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        qat: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        self.bits = check_bits(bits)
        self.qat = bool(qat)

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise BinsenseError(f"QuantizedBatchNorm expects [N, C, ...] input, got {x.dim()}-D.")

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm, bits: int, qat: bool = True) -> QuantizedBatchNorm:
        """A QuantizedBatchNorm with ``bn``'s configuration, parameters and statistics."""
        ref = bn.running_mean if bn.running_mean is not None else bn.weight
        q = cls(
            bn.num_features, bits, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, qat,
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
        )  # fmt: skip
        q.load_state_dict(bn.state_dict())
        q.train(bn.training)
        return q

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            var, mean = torch.var_mean(x, dim=dims, correction=0)
            if self.training and self.track_running_stats:
                self._update_running(mean.detach(), var.detach(), x.numel() // x.size(1))
        else:
            mean, var = self.running_mean, self.running_var
        a = (self.weight if self.affine else 1.0) / torch.sqrt(var + self.eps)
        b = (self.bias if self.affine else 0.0) - a * mean
        if self.training and not self.qat:
            return x * channel_view(a, x) + channel_view(b, x)
        a_q = quantize_fixed_ste(a, self.bits)
        b_q = quantize_fixed_ste(b, self.bits)
        return x * channel_view(a_q, x) + channel_view(b_q, x)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, n: int) -> None:
        self.num_batches_tracked += 1
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (n / max(n - 1, 1))
        self.running_mean.lerp_(mean, m)
        self.running_var.lerp_(unbiased, m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}, qat={self.qat}"


def replace_batchnorm(model: nn.Module, bits: int, qat: bool = True) -> nn.Module:
    """Replace every float BN of ``model`` by a :class:`QuantizedBatchNorm` (in place).

    Returns ``model``; the new layers carry the old parameters and statistics, ready for
    quantization-aware fine-tuning. Modules coupled to a replaced BN (a
    :class:`~binsense.layers.design.DeSign` with ``bn=...``) are pointed at its successor.
    """
    check_bits(bits)
    coupled = _coupled(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm) and not isinstance(child, QuantizedBatchNorm):
                new = QuantizedBatchNorm.from_batchnorm(child, bits, qat)
                setattr(parent, name, new)
                for user in coupled.get(id(child), []):  # e.g. a DeSign reading gamma
                    user.coupled_bn = new
    return model


__all__ = [
    "BN_SCALES",
    "BN_TARGETS",
    "BnPairingWarning",
    "QuantizedBatchNorm",
    "bn_quantized",
    "bn_sigma",
    "fold_bn_affine",
    "quantize_bn",
    "replace_batchnorm",
]
