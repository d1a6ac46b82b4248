"""The tone-curve figure: input code -> planes set, one panel per colour channel.

A thermometer with ``K`` planes maps each 8-bit code to a level 0..K (how many planes
are +1): a global tone curve. :func:`plot_tone_curves` draws it for several encoders
(GLT against the uniform thermometer, and the quantile one if given) from their exact
deployed code tables, so the figure shows what the deployed encoder computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from binsense.encoders.base import ADC_MAX, InputEncoder
from binsense.encoders.thermometer import PlaneEncoder
from binsense.errors import BinsenseError
from binsense.io import atomic_write

#: Line styles by encoder name (others get the default cycle).
_STYLES = {
    "uniform": {"color": "0.45", "ls": "--"},
    "quantile": {"color": "C2", "ls": ":"},
    "nbc": {"color": "0.7", "ls": "-."},
}


def _panel_names(channels: int, names: Sequence[str]) -> list[str]:
    if len(names) == channels:
        return list(names)
    if channels == 1:
        return ["gray"]
    return [f"channel {c}" for c in range(channels)]


def plot_tone_curves(
    encoders: Mapping[str, InputEncoder],
    path: str | Path,
    channel_names: Sequence[str] = ("R", "G", "B"),
    title: str | None = None,
) -> Path:
    """PNG of each encoder's tone curve (code 0..255 -> planes set) per colour channel.

    ``encoders``: label -> binary plane encoder (``glt``, ``uniform``, ``quantile``;
    ``nbc`` draws its bit count, not a tone curve). All must have the same channel count
    ``C``; there is one panel per channel, named from ``channel_names`` when it has ``C``
    names (else ``gray`` or ``channel i``). Written atomically
    (:func:`binsense.io.atomic_write`); returns the path.
    """
    if not encoders:
        raise BinsenseError("plot_tone_curves needs at least one encoder.")
    curves = {}
    for label, enc in encoders.items():
        if not isinstance(enc, PlaneEncoder):
            raise BinsenseError(
                f"{label!r} is a {type(enc).__name__}: only binary plane encoders (nbc, "
                "uniform, quantile, glt) have a tone curve."
            )
        curves[label] = (enc.tone_curve().cpu(), enc.planes)
    channels = {c.shape[0] for c, _ in curves.values()}
    if len(channels) != 1:
        raise BinsenseError(f"the encoders have different channel counts: {sorted(channels)}.")
    (count,) = channels

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    codes = list(range(ADC_MAX + 1))
    fig, axes = plt.subplots(1, count, figsize=(3.6 * count + 0.6, 3.4), squeeze=False)
    for c, (ax, name) in enumerate(zip(axes[0], _panel_names(count, channel_names), strict=True)):
        for label, (curve, planes) in curves.items():
            style = _STYLES.get(label.split("-")[0].lower(), {})
            ax.step(codes, curve[c].tolist(), where="post", lw=1.4,
                    label=f"{label} (K={planes})", **style)  # fmt: skip
        ax.set_title(name)
        ax.set_xlim(0, ADC_MAX)
        ax.set_xlabel("input code (8-bit ADC)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("planes set")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title or "tone curves: code in -> planes set", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    finally:
        plt.close(fig)
    return path


__all__ = ["plot_tone_curves"]
