r"""Input encoders: the slot between the sensor signal and a model's first layer.

A model takes images in [0, 1] — the normalised sensor readout, after sensor noise — and
its first stage is an *encoder* (:class:`InputEncoder`) that turns them into what the
first layer reads. An encoder says how many channels it outputs (:attr:`out_channels`)
and whether they are binary (:attr:`binary`, ±1 planes, so the first conv can be binary
too). Encoders are chosen by name from :data:`ENCODERS` (model option ``encoder``):

- ``"float"`` (default): per-channel standardisation :math:`(s - \mu_c)/\sigma_c` with the
  data set's statistics; real-valued, as many channels as the image.

To add one, subclass :class:`InputEncoder` with a constructor
``(info: DatasetInfo, **options)`` and register it: ``ENCODERS.add("name", cls)``
(``docs/architecture.md``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from binsense.data import DatasetInfo, ImageTensors
from binsense.registry import ComponentSpec, Registry


class InputEncoder(nn.Module):
    """Base class: maps ``(B, C, H, W)`` images in [0, 1] to the first layer's input.

    An encoder whose parameters depend on the training data (thresholds at data
    quantiles) sets ``needs_fit`` and implements :meth:`fit`; the trainer calls it once,
    on the training split, after building the model and before the first step. What it
    fits must live in buffers or parameters, so checkpoints carry it.
    """

    #: Whether the output is ±1 planes (a binary first layer can read them).
    binary: ClassVar[bool] = False
    #: Whether :meth:`fit` must run on the training data before training.
    needs_fit: ClassVar[bool] = False
    #: Channels of the output.
    out_channels: int

    def fit(self, data: ImageTensors) -> None:
        """Fit data-dependent parameters on the training split (uint8 images)."""


class FloatEncoder(InputEncoder):
    r"""Per-channel standardisation of a [0, 1] sensor signal: :math:`(s - \mu_c)/\sigma_c`.

    ``mean`` and ``std`` default to the data set's (:class:`~binsense.data.DatasetInfo`).
    Kept as buffers named ``mean`` and ``std``.
    """

    binary: ClassVar[bool] = False

    def __init__(
        self,
        info: DatasetInfo,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__()
        mean = list(info.mean) if mean is None else mean
        std = list(info.std) if std is None else std
        self.out_channels = info.in_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


ENCODERS: Registry = Registry("encoder")
ENCODERS.add("float", FloatEncoder)


def build_encoder(spec: ComponentSpec, info: DatasetInfo) -> InputEncoder:
    """The encoder ``spec`` (a name or ``{name = ..., <options>}``) for data set ``info``."""
    return ENCODERS.build(spec, info=info)


__all__ = ["ENCODERS", "FloatEncoder", "InputEncoder", "build_encoder"]
