r"""Input encoders: the slot between the sensor signal and a model's first layer.

A model takes images in [0, 1] — the normalised sensor readout, after sensor noise — and
its first stage is an *encoder* (:class:`InputEncoder`) that turns them into what the
first layer reads. An encoder says how many channels it outputs (:attr:`out_channels`)
and whether they are binary (:attr:`binary`, ±1 planes, so the first conv can be binary
too). Encoders are chosen by name from :data:`ENCODERS` (model option ``encoder``):

- ``"float"`` (default): per-channel standardisation :math:`(s - \mu_c)/\sigma_c` with the
  data set's statistics; real-valued, as many channels as the image.

The binary encoders read the code of an 8-bit ADC,
:math:`c = \mathrm{clamp}(\mathrm{round}(255 s), 0, 255)` (:func:`adc_code`), and output
``K`` ±1 planes per channel, ``(B, C*K, H, W)`` channel-major (study S3):

- ``"nbc"``: the natural binary code, the 8 bit-planes of the code, MSB first (a
  conventional ADC; ``K = 8``) (:class:`NBCEncoder`);
- ``"uniform"``: a ``levels``-plane thermometer,
  :math:`t_k = \lfloor 255k/(K+1) \rfloor + 1` (:class:`UniformThermometer`);
- ``"quantile"``: thresholds at the training-set quantiles, histogram equalisation,
  per channel or shared (:class:`QuantileThermometer`, fitted by the trainer);
- ``"glt"``: learned thresholds, monotone by construction, initialised uniform or at the
  quantiles, trained with a logistic surrogate gradient, frozen to integer codes in eval
  mode (:class:`LearnedThermometer`; binsense's parameterisation).

Thermometers give their integer thresholds (``thresholds_codes()``, ``(C, K)``) to the
deploy step; :func:`binsense.encoders.plot.plot_tone_curves` draws their tone curves.

To add one, subclass :class:`InputEncoder` with a constructor
``(info: DatasetInfo, **options)`` and register it: ``ENCODERS.add("name", cls)``
(``docs/architecture.md``).
"""

from __future__ import annotations

from binsense.data import DatasetInfo
from binsense.encoders.base import ADC_MAX, FloatEncoder, InputEncoder, adc_code
from binsense.encoders.glt import LearnedThermometer
from binsense.encoders.thermometer import (
    NBCEncoder,
    PlaneEncoder,
    QuantileThermometer,
    ThermometerEncoder,
    UniformThermometer,
    quantile_thresholds,
    uniform_thresholds,
)
from binsense.registry import ComponentSpec, Registry

ENCODERS: Registry = Registry("encoder")
ENCODERS.add("float", FloatEncoder)
ENCODERS.add("nbc", NBCEncoder)
ENCODERS.add("uniform", UniformThermometer)
ENCODERS.add("quantile", QuantileThermometer)
ENCODERS.add("glt", LearnedThermometer)


def build_encoder(spec: ComponentSpec, info: DatasetInfo) -> InputEncoder:
    """The encoder ``spec`` (a name or ``{name = ..., <options>}``) for data set ``info``."""
    return ENCODERS.build(spec, info=info)


__all__ = [
    "ADC_MAX",
    "ENCODERS",
    "FloatEncoder",
    "InputEncoder",
    "LearnedThermometer",
    "NBCEncoder",
    "PlaneEncoder",
    "QuantileThermometer",
    "ThermometerEncoder",
    "UniformThermometer",
    "adc_code",
    "build_encoder",
    "quantile_thresholds",
    "uniform_thresholds",
]
