r"""Knowledge distillation (KD): a loss hook that trains a student against a frozen teacher.

The objective of a batch (Hinton et al. 2015, with the usual :math:`T^2` factor that
keeps the soft term's gradient scale independent of :math:`T`):

.. math:: L = \alpha\,\mathrm{CE}(z_s, y) + (1 - \alpha)\,T^2\,
          \mathrm{KL}\big(\operatorname{softmax}(z_t / T)\ \|\ \operatorname{softmax}(z_s / T)\big)

with :math:`z_s` the student's logits, :math:`z_t` the teacher's on the same inputs, the
KL divergence averaged over the batch. :class:`Distillation` is a training loss hook,
``loss(logits, targets, inputs)`` (``Hooks.loss`` of :mod:`binsense.train.trainer`): it
runs the teacher on ``inputs`` (the batch the student saw, after augmentation and
training noise) in eval mode and without gradient; the teacher's parameters are frozen
(``requires_grad = False``) and it never leaves eval mode. The teacher is a model:
reading it from a checkpoint is training's business (the config's ``distill`` field:
:class:`binsense.train.callbacks.DistillCallback` loads and checks it;
:func:`binsense.train.load_model` reads one by hand). This module never imports
:mod:`binsense.train`, which imports it.

**Defaults: α = 0, T = 1 — ReActNet's pure distillation** (Liu et al., "ReActNet:
towards precise binary neural network with generalized activation functions", ECCV
2020, its "distributional loss"). Checked in the authors' code (GitHub
``liuzechun/ReActNet``, ``*/train.py`` and ``utils/KD_loss.py``): the training loss is
only ``DistributionLoss(logits_student, logits_teacher)``, the cross-entropy of the
student's log-softmax against the teacher's softmax — at :math:`T = 1`, no label term —
from a frozen, eval-mode real-valued teacher (``requires_grad = False``). That
cross-entropy is the KL divergence above plus the teacher's entropy, a constant, so it
has the same gradient.

**Real-to-Binary** (Martinez et al., "Training binary neural networks with real-to-binary
convolutions", ICLR 2020) trains with the cross-entropy *plus* a KD term (plus attention
matching, which a logits hook cannot do). Issue 11 cites its KD weight as 0.8; the paper's
text was not reachable from here to confirm it, and Larq Zoo's re-implementation (which
the authors' README points to) uses classification weight 1.0, output-matching weight
3.0 and :math:`T = 1`, marked as still to be checked there. A sum ``CE + λ·KD`` is this loss
with :math:`\alpha = 1/(1 + \lambda)` times :math:`1 + \lambda` (the same direction of
descent; only the step scale differs): λ = 0.8 gives α ≈ 0.556, λ = 3 gives α = 0.25.
binsense therefore does not take Real-to-Binary as the default; pass ``alpha`` to use
such a mix. These defaults are binsense's choices, documented here, not the S3 paper's
(whose KD setup is not public).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from binsense.errors import BinsenseError

# The one home of the defaults: binsense.train.config imports them (train -> compress;
# compress never imports train).
#: ReActNet (Liu et al., ECCV 2020): pure distillation, no label term.
DEFAULT_ALPHA = 0.0
#: ReActNet: softmax at temperature 1.
DEFAULT_TEMPERATURE = 1.0


def check_kd_options(alpha: Any, temperature: Any) -> tuple[float, float]:
    """``(alpha, temperature)`` as floats, or one-line :class:`BinsenseError`."""
    ok = isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
    if not ok or not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise BinsenseError(
            f"distillation alpha (the cross-entropy weight) must be a number in [0, 1], "
            f"got {alpha!r}."
        )
    ok = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not ok or not math.isfinite(temperature) or temperature <= 0:
        raise BinsenseError(
            f"distillation temperature must be a finite number > 0, got {temperature!r}."
        )
    return float(alpha), float(temperature)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = DEFAULT_ALPHA,
    temperature: float = DEFAULT_TEMPERATURE,
    label_smoothing: float = 0.0,
) -> Tensor:
    r""":math:`\alpha\,\mathrm{CE}(z_s, y) + (1-\alpha)\,T^2\,\mathrm{KL}(p_t^T \| p_s^T)`
    (module docstring), a scalar; the teacher's logits are detached.

    ``alpha = 1`` is the plain cross-entropy (the teacher term is not computed);
    ``alpha = 0`` ignores ``targets``.
    """
    alpha, t = check_kd_options(alpha, temperature)
    if student_logits.shape != teacher_logits.shape:
        raise BinsenseError(
            f"the teacher's logits {tuple(teacher_logits.shape)} do not match the student's "
            f"{tuple(student_logits.shape)}; distil from a teacher trained on the same classes."
        )
    loss = student_logits.new_zeros(())
    if alpha > 0:
        ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
        loss = loss + alpha * ce
    if alpha < 1:
        log_p_s = F.log_softmax(student_logits / t, dim=1)
        log_p_t = F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / t, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        loss = loss + (1 - alpha) * t * t * kl
    return loss


def _check_teacher(teacher: Any) -> nn.Module:
    if isinstance(teacher, nn.Module):
        return teacher
    raise BinsenseError(
        f"the teacher must be a model, got {type(teacher).__name__}; load a checkpoint with "
        "binsense.train.load_model(PATH)[0], or give the config's distill field."
    )


class Distillation:
    """Loss hook ``loss(logits, targets, inputs)`` distilling a frozen ``teacher``.

    Args:
        teacher: the teacher model (a checkpoint's: ``binsense.train.load_model(path)[0]``).
            It is set to eval mode and its parameters to ``requires_grad = False`` (in
            place), and it is moved to the inputs' device at the first call.
        alpha: weight of the cross-entropy on the labels, in [0, 1]; ``1 - alpha`` weighs
            the KD term. Default 0 (ReActNet; module docstring).
        temperature: softmax temperature ``T > 0``. Default 1 (ReActNet).
        label_smoothing: of the cross-entropy term.

    Use: ``train(config, hooks=Hooks(loss=Distillation(teacher)))``.
    """

    def __init__(
        self,
        teacher: nn.Module,
        alpha: float = DEFAULT_ALPHA,
        temperature: float = DEFAULT_TEMPERATURE,
        label_smoothing: float = 0.0,
    ) -> None:
        self.alpha, self.temperature = check_kd_options(alpha, temperature)
        self.label_smoothing = float(label_smoothing)
        self.teacher = _check_teacher(teacher)
        self.teacher.eval()
        self.teacher.requires_grad_(False)

    @torch.no_grad()
    def teacher_logits(self, inputs: Tensor) -> Tensor:
        """The teacher's logits on ``inputs`` (eval mode, no gradient)."""
        teacher = self.teacher
        if teacher.training:  # someone called .train() on it: distil from eval mode only
            teacher.eval()
        device = next((p.device for p in teacher.parameters()), inputs.device)
        if device != inputs.device:
            teacher.to(inputs.device)
        return teacher(inputs)

    def __call__(self, logits: Tensor, targets: Tensor, inputs: Tensor) -> Tensor:
        if self.alpha == 1.0:  # plain cross-entropy: no teacher pass needed
            return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        return kd_loss(
            logits, self.teacher_logits(inputs), targets, alpha=self.alpha,
            temperature=self.temperature, label_smoothing=self.label_smoothing,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"Distillation(teacher={type(self.teacher).__name__}, alpha={self.alpha}, "
            f"temperature={self.temperature})"
        )


def distillation_loss(
    teacher: nn.Module,
    alpha: float = DEFAULT_ALPHA,
    temperature: float = DEFAULT_TEMPERATURE,
    label_smoothing: float = 0.0,
) -> Distillation:
    """A training loss hook (``Hooks.loss``): :class:`Distillation` from the ``teacher``
    model with ``alpha`` and ``temperature``."""
    return Distillation(teacher, alpha, temperature, label_smoothing)


__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_TEMPERATURE",
    "Distillation",
    "check_kd_options",
    "distillation_loss",
    "kd_loss",
]
