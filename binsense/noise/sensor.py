r"""CMOS image-sensor noise: fixed-pattern noise (FPN), temporal noise and the ADC.

Images are sensor readouts, the normalised signal :math:`s \in [0, 1]` (1 = full scale).
Fixed-pattern noise follows the EMVA 1288 decomposition (EMVA Standard 1288, Release 4.0,
2021, "spatial nonuniformity"): an additive dark-signal nonuniformity (DSNU, *offset*) and
a multiplicative photo-response nonuniformity (PRNU, *gain*), each split into a pixel, a
row and a column part. For one sensor,

.. math:: y = \operatorname{ADC}_b\!\Big(\operatorname{clip}_{[0,1]}\big(s\,(1 + g)
          + o + \sigma_t\,n_t\big)\Big), \qquad
          g = \textstyle\sum_{\text{gain parts}} \sigma\,n, \quad
          o = \textstyle\sum_{\text{offset parts}} \sigma\,n

with :math:`n \sim \mathcal{N}(0, 1)` of shape :math:`H \times W` (pixel),
:math:`1 \times W` (column: one value per column, constant down it) or :math:`H \times 1`
(row), one map per colour channel (``per_channel``) or one shared by all channels;
:math:`n_t` is temporal noise, fresh for every frame; :math:`\operatorname{ADC}_b(y) =
\operatorname{round}(y\,(2^b - 1))/(2^b - 1)`.

Conventions that are binsense's choices (the S0 paper's equations and its definition of
"%" are not known, ``docs/studies.md``): ``level`` is :math:`\sigma` as a fraction of
full scale ("5 % column FPN" is ``level=0.05``); Gaussian draws; noise, then clip, then an
8-bit ADC by default.

``level`` is the spread *before* clipping. Near black or full scale the clip to [0, 1]
cuts half of the Gaussian off, so the spread actually seen is smaller and the mean moves:
for an offset :math:`o \sim \mathcal{N}(0, \sigma^2)` at :math:`s = 0`,
:math:`\operatorname{clip}(o) = \max(o, 0)` (while :math:`\sigma \ll 1`) has mean
:math:`\sigma/\sqrt{2\pi} \approx 0.399\,\sigma` and standard deviation
:math:`\sigma\sqrt{1/2 - 1/(2\pi)} \approx 0.584\,\sigma`; at :math:`s = 1` the mean
moves down by as much. A "30 %" offset (``level=0.3``) on a black or white field is
therefore about a 17.5 % spread with a mean shift of about :math:`\pm 0.12` of full
scale (quadrature with both clip ends: mean shift 0.1196, spread 0.1749; measured with
:class:`SensorNoise`, ``pixel_offset`` at 0.3, four 512x512 sensors: +0.1195 and 0.1748
at :math:`s = 0`, -0.1199 and 0.1751 at :math:`s = 1`, the same with or without the 8-bit
ADC). Even at mid scale (:math:`s = 0.5`) both ends clip and the spread is 0.275, not 0.3.
Gain noise (:math:`s\,g`) vanishes at :math:`s = 0` and clips only near full scale.

A *sensor instance* is a seed: the pattern is drawn from ``torch.Generator`` objects on
the CPU, seeded from ``(seed, noise type)``, then moved to the data's device, so instance
*d* is the same sensor on every device, for every model and at every level (the level only
scales the same standard-normal map), and a component's map does not depend on which other
components are present.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from binsense.errors import BinsenseError, unit_range_problem
from binsense.registry import Registry

Kind = Literal["offset", "gain"]
Axis = Literal["pixel", "column", "row"]
LevelSpec = float | tuple[float, float]
ComponentSpec = Mapping[str, float] | Iterable[tuple[str, float]]

_MASK63 = (1 << 63) - 1


@dataclass(frozen=True)
class NoiseType:
    """A fixed-pattern noise type: additive ``offset`` or multiplicative ``gain``, on an axis.

    ``axis`` says which pixels share a draw: ``pixel`` (none), ``column`` (all pixels of a
    column), ``row`` (all pixels of a row).
    """

    name: str
    kind: Kind
    axis: Axis
    index: int

    def map_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        """Shape of the standard-normal draw: ``(channels, H or 1, W or 1)``."""
        h = height if self.axis in ("pixel", "row") else 1
        w = width if self.axis in ("pixel", "column") else 1
        return channels, h, w


NOISE_TYPES: Registry = Registry("noise type")
"""The six fixed-pattern noise types by name (``pixel_offset``, ``column_gain``, ...)."""
for _i, (_axis, _kind) in enumerate(
    (a, k) for a in ("pixel", "column", "row") for k in ("offset", "gain")
):
    NOISE_TYPES.add(f"{_axis}_{_kind}", NoiseType(f"{_axis}_{_kind}", _kind, _axis, _i))


def noise_type_names() -> list[str]:
    """Names of the fixed-pattern noise types (``pixel_offset``, ``column_gain``, ...)."""
    return NOISE_TYPES.names()


def get_noise_type(name: str) -> NoiseType:
    """The :class:`NoiseType` called ``name`` (clear error with a suggestion if unknown)."""
    return NOISE_TYPES.get(name)


def _check_level(level: float, what: str = "level") -> float:
    level = float(level)
    if not math.isfinite(level) or level < 0:
        raise BinsenseError(
            f"{what} must be a finite number >= 0 (fraction of full scale), got {level}."
        )
    return level


def _check_adc_bits(adc_bits: int | None) -> int | None:
    if adc_bits is not None and not (isinstance(adc_bits, int) and 1 <= adc_bits <= 16):
        raise BinsenseError(f"adc_bits must be None or an integer 1..16, got {adc_bits!r}.")
    return adc_bits


def _stream_seed(*parts: int) -> int:
    """Mix integers into one 63-bit generator seed (SplitMix64-style, stable everywhere)."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & _MASK63


def _check_images(x: Tensor) -> Tensor:
    if not x.is_floating_point():
        raise BinsenseError(
            f"sensor noise expects float images in [0, 1], got dtype {x.dtype}; "
            "convert first, e.g. x.float() / 255."
        )
    return x


def _check_signal(x: Tensor) -> Tensor:
    """:func:`_check_images`, then: channels first, no NaN, values in [0, 1].

    One ``aminmax`` per call (a NaN makes both comparisons false, so it is caught too);
    a shape ``[..., H, W, C]`` (more than 4 "channels" but at most 4 columns) is taken
    for channels-last and refused.
    """
    _check_images(x)
    if x.dim() >= 3 and x.shape[-3] > 4 and x.shape[-1] <= 4:
        raise BinsenseError(
            f"sensor noise expects channels-first images [..., C, H, W], got shape "
            f"{tuple(x.shape)}, which looks channels-last [..., H, W, C]; permute first, "
            "e.g. x.permute(0, 3, 1, 2)."
        )
    what = unit_range_problem(x)
    if what is not None:
        raise BinsenseError(
            f"sensor noise expects images in [0, 1] (the normalised sensor signal), got "
            f"{what}; pass pixel / 255 without mean/std normalisation, and no NaN."
        )
    return x


def _chw(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) < 3:
        raise BinsenseError(f"sensor noise needs images [..., C, H, W], got shape {tuple(shape)}.")
    c, h, w = (int(s) for s in shape[-3:])
    return c, h, w


def readout(y: Tensor, clip: bool = True, adc_bits: int | None = 8) -> Tensor:
    r"""Clip to [0, 1] (if ``clip``), then the ADC :math:`\operatorname{round}(y(2^b-1))/(2^b-1)`.

    Rounding is to nearest, ties to even. ``adc_bits=None`` keeps the analog value (e.g.
    when the model's own input encoder digitises).
    """
    return _readout_(y.clone(), clip, adc_bits)


def _readout_(y: Tensor, clip: bool, adc_bits: int | None) -> Tensor:
    """:func:`readout` in place (on a freshly computed tensor)."""
    if clip:
        y.clamp_(0.0, 1.0)
    if adc_bits is not None:
        levels = float(2**adc_bits - 1)
        y.mul_(levels).round_().div_(levels)
    return y


@dataclass(frozen=True)
class NoiseComponent:
    """One part of a fixed pattern: a :class:`NoiseType` at a level (sigma, full scale = 1)."""

    type: NoiseType
    level: float


def _components(spec: str | ComponentSpec, level: float | None) -> tuple[NoiseComponent, ...]:
    if isinstance(spec, str):
        if level is None:
            raise BinsenseError(f"sensor noise {spec!r} needs a level (e.g. 0.05 for 5 %).")
        pairs: list[tuple[str, float]] = [(spec, level)]
    else:
        if level is not None:
            raise BinsenseError(
                "give either one noise type and a level, or a list of (type, level) "
                "components without a separate level."
            )
        pairs = list(spec.items()) if isinstance(spec, Mapping) else [tuple(p) for p in spec]
    if not pairs:
        raise BinsenseError("sensor noise needs at least one (type, level) component.")
    names = [name for name, _ in pairs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise BinsenseError(f"noise type {dup!r} appears twice; give each type once.")
    return tuple(NoiseComponent(get_noise_type(n), _check_level(lv)) for n, lv in pairs)


class SensorNoise:
    r"""Fixed-pattern (plus optional temporal) noise of a CMOS sensor, then clip and ADC.

    Args:
        type: a noise type name (:func:`noise_type_names`) — or several components as a
            ``{type: level}`` mapping or ``[(type, level), ...]`` (then ``level=None``;
            see also :meth:`combined`).
        level: :math:`\sigma` as a fraction of full scale (0.05 = "5 %"), before the
            clip: near 0 or 1 the clip shrinks the spread seen in the image and shifts
            its mean (an offset at 0.3 on a black field: spread about 0.175, mean +0.12;
            module docstring).
        per_channel: one pattern per colour channel instead of one shared by all.
        temporal: :math:`\sigma_t` of additive temporal (read) noise, fresh per frame.
        adc_bits: ADC resolution after clipping; ``None`` skips the ADC.
        clip: clip to [0, 1] before the ADC.

    A sensor instance is a seed: :meth:`pattern` gives its maps, :meth:`apply` runs a batch
    through it, :meth:`apply_instances` through several at once.
    """

    def __init__(
        self,
        type: str | ComponentSpec,
        level: float | None = None,
        per_channel: bool = False,
        temporal: float = 0.0,
        adc_bits: int | None = 8,
        clip: bool = True,
    ) -> None:
        self.components = _components(type, level)
        self.per_channel = bool(per_channel)
        self.temporal = _check_level(temporal, "temporal")
        self.adc_bits = _check_adc_bits(adc_bits)
        self.clip = bool(clip)

    @classmethod
    def combined(cls, components: ComponentSpec, **options) -> SensorNoise:
        """Several components at once, e.g. ``[("column_offset", 0.03), ("pixel_gain", 0.01)]``.

        ``options`` are the other constructor arguments (``per_channel``, ``adc_bits``, ...).
        """
        return cls(components, None, **options)

    def __repr__(self) -> str:
        parts = ", ".join(f"{c.type.name}={c.level:g}" for c in self.components)
        return (
            f"SensorNoise({parts}, per_channel={self.per_channel}, temporal={self.temporal:g}, "
            f"adc_bits={self.adc_bits}, clip={self.clip})"
        )

    def _compact(self, seed: int, channels: int, h: int, w: int) -> tuple[Tensor, Tensor]:
        """``(1 + g, o)`` of sensor ``seed`` on the CPU, in broadcastable (unexpanded) shape."""
        g = torch.zeros(1, 1, 1)
        o = torch.zeros(1, 1, 1)
        for comp in self.components:
            gen = torch.Generator().manual_seed(_stream_seed(seed, comp.type.index))
            n = torch.randn(comp.type.map_shape(channels, h, w), generator=gen) * comp.level
            if comp.type.kind == "gain":
                g = g + n
            else:
                o = o + n
        return 1.0 + g, o

    def pattern(
        self,
        seed: int,
        shape: Sequence[int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        """The fixed pattern of sensor ``seed`` for images of ``shape`` (``[..., C, H, W]``).

        Returns ``(gain_map, offset_map)``, each ``[C, H, W]`` (expanded views where a map
        is shared), such that the noisy signal is ``s * gain_map + offset_map``: the gain
        map is the factor :math:`1 + g` (all ones without gain parts), the offset map is
        :math:`o`. Deterministic in ``seed`` and identical on every device.
        """
        c, h, w = _chw(shape)
        gain, offset = self._compact(seed, c if self.per_channel else 1, h, w)
        gain = gain.to(device=device, dtype=dtype).expand(c, h, w)
        return gain, offset.to(device=device, dtype=dtype).expand(c, h, w)

    def patterns(
        self,
        seeds: Sequence[int],
        shape: Sequence[int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`pattern` of several sensors, stacked: ``(gain, offset)``, each ``[S,C,H,W]``."""
        c, h, w = _chw(shape)
        if len(seeds) == 0:
            raise BinsenseError("patterns() needs at least one sensor seed.")
        maps = [self._compact(s, c if self.per_channel else 1, h, w) for s in seeds]
        gain, offset = (
            torch.stack(ms).to(device=device, dtype=dtype).expand(-1, c, h, w)
            for ms in zip(*maps, strict=True)
        )
        return gain, offset

    def _finish(self, y: Tensor, generator: torch.Generator | None) -> Tensor:
        if self.temporal > 0:
            dev = generator.device if generator is not None else y.device
            n = torch.randn(y.shape, generator=generator, device=dev, dtype=y.dtype)
            y.add_(n.to(y.device), alpha=self.temporal)
        return _readout_(y, self.clip, self.adc_bits)

    def apply(self, x: Tensor, seed: int, generator: torch.Generator | None = None) -> Tensor:
        """Images ``x`` (``[..., C, H, W]`` in [0, 1]) as seen by sensor ``seed``.

        Every image of the batch gets the same fixed pattern. Temporal noise (if any) is
        drawn from ``generator`` (default: the global generator), fresh per call.
        """
        gain, offset = self.pattern(seed, _check_signal(x).shape, x.device, x.dtype)
        return self._finish(torch.addcmul(offset, x, gain), generator)

    def apply_instances(
        self, x: Tensor, seeds: Sequence[int], generator: torch.Generator | None = None
    ) -> Tensor:
        """``x`` through several sensors at once, ``[S, *x.shape]``.

        Entry ``i`` equals :meth:`apply` with ``seeds[i]`` (temporal noise aside).
        Vectorised over instances (one broadcast multiply-add); reshape the result to
        ``[S * B, C, H, W]`` to evaluate all instances in one forward pass.
        """
        gain, offset = self.patterns(seeds, _check_signal(x).shape, x.device, x.dtype)
        index = (slice(None),) + (None,) * (x.dim() - 3)  # [S, C, H, W] -> [S, 1.., C, H, W]
        return self._finish(torch.addcmul(offset[index], x.unsqueeze(0), gain[index]), generator)


def fpn_components(frame: Tensor) -> dict[str, float]:
    r"""EMVA-1288-style spatial variance decomposition of one flat-field frame ``[H, W]``.

    With the model :math:`y_{ij} = \mu + r_i + c_j + p_{ij}` (row, column, pixel parts),
    the residual after removing row and column means estimates the pixel variance,
    :math:`s_p^2 = \sum (y_{ij} - \bar y_{i\cdot} - \bar y_{\cdot j} + \bar y)^2 /
    ((H-1)(W-1))`; the variance of the column means contains :math:`\sigma_p^2/H` besides
    the column part, so :math:`s_c^2 = \operatorname{var}_j(\bar y_{\cdot j}) - s_p^2/H`,
    and likewise :math:`s_r^2 = \operatorname{var}_i(\bar y_{i\cdot}) - s_p^2/W`
    (EMVA 1288 Release 4.0, spatial nonuniformity). For a frame averaged over many
    exposures, temporal noise drops out. Returns the standard deviations ``row``,
    ``column``, ``pixel`` (negative variance estimates are clipped to 0) and ``mean``.
    """
    if frame.dim() != 2:
        raise BinsenseError(
            f"fpn_components needs one frame [H, W], got shape {tuple(frame.shape)}."
        )
    y = frame.double()
    h, w = y.shape
    row_means, col_means, mean = y.mean(1), y.mean(0), y.mean()
    resid = y - row_means[:, None] - col_means[None, :] + mean
    pixel_var = resid.pow(2).sum() / ((h - 1) * (w - 1))
    col_var = (col_means.var() - pixel_var / h).clamp_min(0)
    row_var = (row_means.var() - pixel_var / w).clamp_min(0)
    return {
        "row": row_var.sqrt().item(),
        "column": col_var.sqrt().item(),
        "pixel": pixel_var.sqrt().item(),
        "mean": mean.item(),
    }


@dataclass(frozen=True)
class _MixtureEntry:
    type: NoiseType
    lo: float
    hi: float
    weight: float


def _mixture(mixture: Iterable[tuple[str, LevelSpec, float]]) -> tuple[_MixtureEntry, ...]:
    entries = []
    for item in mixture:
        if len(item) != 3:
            raise BinsenseError(
                f"a mixture entry is (type, level or (lo, hi), weight), got {item!r}."
            )
        name, level, weight = item
        lo, hi = (level, level) if isinstance(level, (int, float)) else tuple(level)
        lo, hi = _check_level(lo), _check_level(hi)
        if hi < lo:
            raise BinsenseError(f"level range ({lo}, {hi}) of {name!r} must have lo <= hi.")
        if not (math.isfinite(weight) and weight > 0):
            raise BinsenseError(f"mixture weight of {name!r} must be > 0, got {weight}.")
        entries.append(_MixtureEntry(get_noise_type(name), lo, hi, float(weight)))
    if not entries:
        raise BinsenseError("NoiseAugment needs at least one (type, level, weight) entry.")
    return tuple(entries)


class NoiseAugment:
    r"""Noise-aware training: a fresh random sensor per batch or per sample.

    Each *instance* (the whole batch with ``per="batch"``, each image with
    ``per="sample"``) is clean with probability ``p_clean``; otherwise it picks one
    mixture entry with probability proportional to its weight, draws its level uniformly
    in ``(lo, hi)`` (or takes the fixed level) and a fresh fixed pattern of that type;
    then clip and ADC as in :class:`SensorNoise`. Per-sample patterns are drawn as one
    stacked tensor (no Python loop over images).

    Reproducible: call ``t`` uses a generator on the batch's device seeded from
    ``(seed, t)``, and the call counter is saved/restored with :meth:`state_dict` /
    :meth:`load_state_dict` (store it with the training checkpoint to resume exactly).
    The draws depend on the device type (CPU and CUDA generators differ).

    Args:
        mixture: ``[(type, level or (lo, hi), weight), ...]``, e.g.
            ``[("column_offset", (0.05, 0.10), 1.0)]`` (binsense's reading of S0's
            "training with 5-10 % noise").
        per: ``"batch"`` or ``"sample"``.
        p_clean: probability that an instance stays clean.
        seed: seed of the augmentation stream.
        per_channel, adc_bits, clip: as in :class:`SensorNoise`.
    """

    def __init__(
        self,
        mixture: Iterable[tuple[str, LevelSpec, float]],
        per: Literal["batch", "sample"] = "batch",
        p_clean: float = 0.0,
        seed: int = 0,
        per_channel: bool = False,
        adc_bits: int | None = 8,
        clip: bool = True,
    ) -> None:
        self.entries = _mixture(mixture)
        if per not in ("batch", "sample"):
            raise BinsenseError(f"NoiseAugment per must be 'batch' or 'sample', got {per!r}.")
        self.per = per
        if not 0.0 <= p_clean <= 1.0:
            raise BinsenseError(f"p_clean must be in [0, 1], got {p_clean}.")
        self.p_clean = float(p_clean)
        self.seed = int(seed)
        self.per_channel = bool(per_channel)
        self.adc_bits = _check_adc_bits(adc_bits)
        self.clip = bool(clip)
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        """The call counter (and seed, checked on load)."""
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore the call counter saved by :meth:`state_dict`."""
        if int(state["seed"]) != self.seed:
            raise BinsenseError(
                f"NoiseAugment state was saved with seed {state['seed']}, this one has seed "
                f"{self.seed}; construct it with the same seed to resume."
            )
        self.step = int(state["step"])

    def __call__(self, x: Tensor) -> Tensor:
        """Augment a training batch ``x`` ``[B, C, H, W]`` in [0, 1]; advances the counter."""
        if x.dim() != 4:
            raise BinsenseError(
                f"NoiseAugment expects a batch [B, C, H, W], got shape {tuple(x.shape)}."
            )
        b, c, h, w = _check_images(x).shape
        n = b if self.per == "sample" else 1
        gen = torch.Generator(device=x.device).manual_seed(_stream_seed(self.seed, self.step))
        self.step += 1
        dev = x.device

        weights = torch.tensor([e.weight for e in self.entries], device=dev)
        lo = torch.tensor([e.lo for e in self.entries], device=dev)
        hi = torch.tensor([e.hi for e in self.entries], device=dev)
        pick = torch.multinomial(weights, n, replacement=True, generator=gen)
        u = torch.rand(n, generator=gen, device=dev)
        clean = torch.rand(n, generator=gen, device=dev) < self.p_clean
        level = torch.where(clean, 0.0, lo[pick] + (hi[pick] - lo[pick]) * u)

        channels = c if self.per_channel else 1
        gain = torch.zeros(n, 1, 1, 1, device=dev)
        offset = torch.zeros(n, 1, 1, 1, device=dev)
        for k, entry in enumerate(self.entries):
            shape = (n, *entry.type.map_shape(channels, h, w))
            noise = torch.randn(shape, generator=gen, device=dev)
            sigma = torch.where(pick == k, level, 0.0).view(n, 1, 1, 1)
            if entry.type.kind == "gain":
                gain = gain + sigma * noise
            else:
                offset = offset + sigma * noise
        y = torch.addcmul(offset.to(x.dtype), x, (1.0 + gain).to(x.dtype))
        return _readout_(y, self.clip, self.adc_bits)

    def __repr__(self) -> str:
        mix = ", ".join(f"({e.type.name}, {e.lo:g}..{e.hi:g}, {e.weight:g})" for e in self.entries)
        return (
            f"NoiseAugment([{mix}], per={self.per!r}, p_clean={self.p_clean:g}, seed={self.seed})"
        )


__all__ = [
    "NoiseAugment",
    "NoiseComponent",
    "NoiseType",
    "SensorNoise",
    "fpn_components",
    "get_noise_type",
    "noise_type_names",
    "readout",
]
