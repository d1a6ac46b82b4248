"""Evaluation: accuracy and loss of a model over a loader, optionally under a condition.

A *condition* is anything that changes what the model sees or computes at inference —
sensor noise on the input, noise on the weights, quantised batch norm. Input-side
conditions are given as ``input_transform`` (a callable on the [0, 1] image batch);
model-side conditions are applied to the model by the caller (e.g. inside a context
manager) before calling :func:`evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class EvalResult:
    """Mean loss, top-1 accuracy (fraction in [0, 1]) and number of samples."""

    loss: float
    accuracy: float
    n: int


@torch.no_grad()
def evaluate(
    model: nn.Module | Callable[[Tensor], Tensor],
    loader: Iterable[tuple[Tensor, Tensor]],
    input_transform: Callable[[Tensor], Tensor] | None = None,
) -> EvalResult:
    """Top-1 accuracy and cross-entropy of ``model`` in eval mode over ``loader``.

    The model's train/eval mode is restored afterwards. ``model`` may also be any callable
    from images to float logits with no train mode, such as a
    :class:`~binsense.deploy.DeployedModel`.
    """
    module = model if isinstance(model, nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    total_loss, correct, n = 0.0, 0, 0
    try:
        for x, y in loader:
            if input_transform is not None:
                x = input_transform(x)
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += y.numel()
    finally:
        if module is not None:
            module.train(was_training)
    if n == 0:
        raise ValueError("evaluate() got an empty loader")
    return EvalResult(loss=total_loss / n, accuracy=correct / n, n=n)


__all__ = ["EvalResult", "evaluate"]

# Register the built-in condition kinds (clean, sensor_noise, weight_noise, bn_bits).
from binsense.evaluate import conditions, noise_conditions  # noqa: E402,F401
