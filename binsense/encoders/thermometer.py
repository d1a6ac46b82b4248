r"""Binary input encoders: the ADC code of each pixel as ±1 planes.

Every encoder here reads the sensor signal ``s`` in [0, 1] (after sensor noise), takes
the code of an 8-bit ADC, :math:`c = \mathrm{clamp}(\mathrm{round}(255 s), 0, 255)`
(:func:`~binsense.encoders.base.adc_code`), and turns it into ``K`` planes per colour
channel: +1 where the bit or the compare is true, -1 otherwise. The output is float,
``(B, C*K, H, W)``, channel-major (the ``K`` planes of channel 0 first), so a binary
first convolution can read it.

- :class:`NBCEncoder` (``nbc``): the natural binary code, the 8 bit-planes of the code,
  most significant first (a conventional ADC), ``K = 8``.
- :class:`UniformThermometer` (``uniform``): ``K`` planes :math:`b_k = [c \ge t_k]`
  with thresholds splitting the code range uniformly (:func:`uniform_thresholds`), the
  thermometer code of Buckman et al. 2018.
- :class:`QuantileThermometer` (``quantile``): thresholds at the quantiles
  ``k/(K+1)`` of the training codes (:func:`quantile_thresholds`): histogram
  equalisation.

The learned thermometer (``glt``) is in :mod:`binsense.encoders.glt`. Thermometers
expose their integer code thresholds (:meth:`PlaneEncoder.thresholds_codes`) for the
deploy step, and every plane encoder its exact code -> planes table
(:meth:`PlaneEncoder.code_table`) and tone curve (:meth:`PlaneEncoder.tone_curve`).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Annotated, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from binsense.data import DatasetInfo, ImageTensors
from binsense.encoders.base import ADC_MAX, InputEncoder, adc_code
from binsense.errors import BinsenseError

#: A thermometer's plane count per channel: ``K`` strictly increasing integer thresholds
#: must fit in the codes 1..255.
Levels = Annotated[int, Field(ge=1, le=ADC_MAX)]

#: At most this many codes per channel (pooled: in all) enter a quantile fit.
MAX_FIT_VALUES = 1_000_000

#: Bits of the natural binary code.
NBC_BITS = 8


def check_levels(levels: int) -> int:
    """``levels`` as a valid plane count (1..255), or a clear error."""
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= ADC_MAX:
        raise BinsenseError(
            f"levels must be an integer from 1 to {ADC_MAX} (strictly increasing thresholds "
            f"on the 8-bit codes), got {levels!r}."
        )
    return levels


def uniform_thresholds(levels: int) -> list[int]:
    r"""The uniform thermometer's integer thresholds :math:`t_k = \lfloor 255k/(K+1) \rfloor + 1`.

    For ``k = 1..K``. Then :math:`[c \ge t_k] = [c/255 > k/(K+1)]` for every code ``c``:
    exactly the DESIGN rule :math:`b_k = [s > k/(K+1)]` on the ADC's value ``c/255``.
    The ``K + 1`` bins ``[t_k, t_{k+1})`` (``t_0 = 0``, ``t_{K+1} = 256``) differ in size
    by at most one code, and the thresholds are strictly increasing for every
    ``K <= 255`` (``K = 8``: 29, 57, 86, 114, 142, 171, 199, 227).
    """
    k_max = check_levels(levels)
    return [ADC_MAX * k // (k_max + 1) + 1 for k in range(1, k_max + 1)]


def fit_codes(data: ImageTensors | Tensor, per_channel: bool) -> Tensor:
    """The codes a quantile fit reads: ``(C, M)`` (per channel) or ``(1, M)`` (pooled).

    ``data`` is an :class:`~binsense.data.ImageTensors` (or its uint8 ``images``,
    ``[N, C, H, W]``). To stay fast on large sets it keeps whole images, evenly spaced
    over the set (image ``floor(i N / n)`` for ``i < n``), at most
    :data:`MAX_FIT_VALUES` pixels per channel; only if one image alone holds more, its
    pixels are then taken with a stride. Deterministic: no random draw.
    """
    images = data.images if isinstance(data, ImageTensors) else data
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise BinsenseError(
            f"a quantile fit reads uint8 images [N, C, H, W], got {images.dtype} with shape "
            f"{tuple(images.shape)}."
        )
    n, c, h, w = images.shape
    if n == 0 or h * w == 0:
        raise BinsenseError("a quantile fit needs at least one training pixel; the set is empty.")
    keep = min(n, max(1, MAX_FIT_VALUES // (h * w)))
    index = torch.arange(keep, device=images.device) * n // keep
    codes = images.index_select(0, index).transpose(0, 1).reshape(c, -1)
    if codes.shape[1] > MAX_FIT_VALUES:
        codes = codes[:, :: -(-codes.shape[1] // MAX_FIT_VALUES)]
    codes = codes.long()
    return codes if per_channel else codes.reshape(1, -1)


def quantile_thresholds(codes: Tensor, levels: int) -> Tensor:
    r"""Integer thresholds at the quantiles ``k/(K+1)`` of ``codes`` (rows: channels).

    ``codes``: integer codes 0..255, ``(R, M)``. For each row, :math:`t_k` is the
    smallest code ``t`` with :math:`\#\{c < t\} \ge \frac{k}{K+1} M` (exact integer
    arithmetic), so the planes split the pixels into ``K + 1`` levels of about equal
    count: histogram equalisation. (On codes spread evenly over 0..255 this is
    :math:`\lceil 256k/(K+1) \rceil`.)

    Ties: where the histogram has a spike, several quantiles fall on the same code; the
    thresholds are made strictly increasing by nudging up,
    :math:`t_k \leftarrow \max(t_k, t_{k-1} + 1)`, and those that the nudge (or a spike
    at the top code) pushes past 255 are pushed back down from the top,
    :math:`t_k \leftarrow \min(t_k, 255 - (K - k))`. So every plane has its own
    threshold in 1..255 (all pixels at 50 and ``K = 8``: 51, ..., 58; all at 255:
    248, ..., 255). Returns a LongTensor ``(R, K)``.
    """
    k_max = check_levels(levels)
    rows = codes.shape[0]
    codes = codes.long()
    if codes.numel() == 0 or codes.shape[1] == 0:
        raise BinsenseError("quantile thresholds need at least one code per channel.")
    if int(codes.min()) < 0 or int(codes.max()) > ADC_MAX:
        raise BinsenseError(f"codes must lie in 0..{ADC_MAX}.")
    offsets = torch.arange(rows, device=codes.device).view(-1, 1) * (ADC_MAX + 1)
    hist = torch.bincount((codes + offsets).flatten(), minlength=rows * (ADC_MAX + 1))
    hist = hist.view(rows, ADC_MAX + 1)
    below = torch.cat([hist.new_zeros(rows, 1), hist.cumsum(1)], dim=1)  # #{c < t}, t=0..256
    k = torch.arange(1, k_max + 1, device=codes.device)
    target = k.view(1, -1) * below[:, -1:]  # k * M
    t = torch.searchsorted(below * (k_max + 1), target, side="left")
    t = t.clamp(1, ADC_MAX)
    step = torch.arange(k_max, device=codes.device)
    t = torch.cummax(t - step, dim=1).values + step  # nudge up: strictly increasing
    return torch.minimum(t, ADC_MAX - (k_max - 1) + step)  # push back under 256


class PlaneEncoder(InputEncoder, metaclass=ABCMeta):
    """Base of the binary encoders: ADC code -> ``K`` ±1 planes per channel.

    Subclasses implement :meth:`code_bits` (codes -> bool planes); the forward pass, the
    code table and the tone curve follow. Attributes: ``in_channels`` (``C``),
    ``planes`` (``K``), ``out_channels = C * K``.
    """

    binary: ClassVar[bool] = True

    def __init__(self, info: DatasetInfo, planes: int) -> None:
        super().__init__()
        self.in_channels = info.in_channels
        self.planes = planes
        self.out_channels = self.in_channels * planes

    @abstractmethod
    def code_bits(self, codes: Tensor) -> Tensor:
        """Bool planes ``(B, C, K, H, W)`` of integer-valued float codes ``(B, C, H, W)``."""

    @abstractmethod
    def thresholds_codes(self) -> Tensor:
        """Integer code thresholds ``(C, K)``: plane ``k`` of channel ``c`` is
        ``[code >= t[c, k]]`` (a thermometer); what the deploy step and the plot read."""

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise BinsenseError(
                f"{type(self).__name__} expects images [B, {self.in_channels}, H, W], got "
                f"shape {tuple(x.shape)}."
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return planes_pm1(self.code_bits(adc_code(x)))

    def _device(self) -> torch.device:
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")

    @torch.no_grad()
    def code_table(self) -> Tensor:
        """The exact deployed map: bool ``(C, 256, K)``, plane ``k`` of channel ``c`` for
        code ``0..255`` (eval-mode behaviour)."""
        codes = torch.arange(ADC_MAX + 1, dtype=torch.float32, device=self._device())
        codes = codes.view(-1, 1, 1, 1).expand(-1, self.in_channels, 1, 1)
        return self.code_bits(codes)[..., 0, 0].permute(1, 0, 2)

    def tone_curve(self) -> Tensor:
        """Planes set per input code, ``(C, 256)`` LongTensor (a global tone curve for a
        thermometer; for NBC, the bit count of the code)."""
        return self.code_table().sum(dim=-1)


def planes_pm1(bits: Tensor) -> Tensor:
    """Bool planes ``(B, C, K, H, W)`` -> float ±1 ``(B, C*K, H, W)``, channel-major."""
    b, c, k, h, w = bits.shape
    return bits.to(torch.float32).mul_(2).sub_(1).reshape(b, c * k, h, w)


class NBCEncoder(PlaneEncoder):
    r"""Natural binary code: the 8 bit-planes of the 8-bit ADC code, MSB first.

    Plane ``j`` (``j = 0..7``) of channel ``c`` is +1 where bit ``7 - j`` of the code is 1
    (code 128: +1 then seven -1; code 127: -1 then seven +1). What a conventional ADC
    delivers; the reference the thermometers are compared against at equal plane count
    (``K = 8``). It compares against no threshold:
    :meth:`thresholds_codes` is empty, ``(C, 0)``.
    """

    def __init__(self, info: DatasetInfo) -> None:
        super().__init__(info, NBC_BITS)

    def code_bits(self, codes: Tensor) -> Tensor:
        shifts = torch.arange(NBC_BITS - 1, -1, -1, device=codes.device).view(1, 1, -1, 1, 1)
        return ((codes.long().unsqueeze(2) >> shifts) & 1) == 1

    def thresholds_codes(self) -> Tensor:
        return torch.zeros(self.in_channels, 0, dtype=torch.long, device=self._device())


class ThermometerEncoder(PlaneEncoder):
    r"""A thermometer with integer code thresholds: :math:`b_k = [c \ge t_k]`.

    The thresholds live in the long buffer ``thresholds``, ``(C, K)`` per channel or
    ``(1, K)`` shared, strictly increasing in 1..255, so checkpoints carry them.
    """

    def __init__(self, info: DatasetInfo, levels: int, rows: int) -> None:
        super().__init__(info, check_levels(levels))
        t = torch.tensor([uniform_thresholds(levels)] * rows, dtype=torch.long)
        self.register_buffer("thresholds", t)

    def code_bits(self, codes: Tensor) -> Tensor:
        t = self.thresholds.to(codes.dtype)
        return codes.unsqueeze(2) >= t.view(1, t.shape[0], t.shape[1], 1, 1)

    def thresholds_codes(self) -> Tensor:
        return self.thresholds.expand(self.in_channels, -1).clone()


class UniformThermometer(ThermometerEncoder):
    r"""Uniform thermometer with ``levels`` planes per channel (Buckman et al. 2018).

    Thresholds :math:`t_k = \lfloor 255k/(K+1) \rfloor + 1`, ``k = 1..K``, shared by all
    channels, so :math:`b_k = [c \ge t_k] = [c/255 > k/(K+1)]` (:func:`uniform_thresholds`).
    ``levels = 8`` matches NBC-8's plane count; 16 and 32 are the larger options.
    """

    def __init__(self, info: DatasetInfo, levels: Levels = 8) -> None:
        super().__init__(info, levels, rows=1)


class QuantileThermometer(ThermometerEncoder):
    r"""Thermometer at the data quantiles (histogram equalisation), fitted on the training set.

    :meth:`fit` sets, per channel (``per_channel = True``) or shared over the channels,
    the thresholds at the quantiles ``k/(K+1)`` of the training codes
    (:func:`quantile_thresholds`: ties nudged up to keep them strictly increasing), read
    from at most :data:`MAX_FIT_VALUES` codes per channel (:func:`fit_codes`). The
    trainer calls it (``needs_fit``); until then the thresholds are the uniform ones.
    """

    needs_fit: bool = True

    def __init__(self, info: DatasetInfo, levels: Levels = 8, per_channel: bool = True) -> None:
        super().__init__(info, levels, rows=info.in_channels if per_channel else 1)
        self.per_channel = per_channel

    @torch.no_grad()
    def fit(self, data: ImageTensors) -> None:
        check_fit_channels(data, self.in_channels)
        t = quantile_thresholds(fit_codes(data, self.per_channel), self.planes)
        self.thresholds.copy_(t)


def check_fit_channels(data: ImageTensors, channels: int) -> None:
    """A clear error when the fit data's channel count is not the encoder's."""
    images = data.images if isinstance(data, ImageTensors) else data
    if images.dim() != 4 or images.shape[1] != channels:
        raise BinsenseError(
            f"the encoder was built for {channels}-channel images; the fit data has shape "
            f"{tuple(images.shape)}."
        )


__all__ = [
    "MAX_FIT_VALUES",
    "Levels",
    "NBCEncoder",
    "PlaneEncoder",
    "QuantileThermometer",
    "ThermometerEncoder",
    "UniformThermometer",
    "check_levels",
    "fit_codes",
    "planes_pm1",
    "quantile_thresholds",
    "uniform_thresholds",
]
