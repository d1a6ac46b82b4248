"""Noise models: CMOS sensor fixed-pattern noise on the input, analog noise on the weights.

>>> from binsense.noise import SensorNoise, WeightNoise
>>> x_noisy = SensorNoise("column_offset", 0.05).apply(images, seed=0)  # sensor 0
>>> with WeightNoise(eta=0.1).applied(model, seed=0):                     # trial 0
...     logits = model(x)
"""

from binsense.noise.sensor import (
    NoiseAugment,
    NoiseComponent,
    NoiseType,
    SensorNoise,
    fpn_components,
    get_noise_type,
    noise_type_names,
    readout,
)
from binsense.noise.weights import (
    BN_FORMS,
    NOISE_MODES,
    REFERENCES,
    WeightNoise,
    snr_db_to_eta,
)

__all__ = [
    "BN_FORMS",
    "NOISE_MODES",
    "REFERENCES",
    "NoiseAugment",
    "NoiseComponent",
    "NoiseType",
    "SensorNoise",
    "WeightNoise",
    "fpn_components",
    "get_noise_type",
    "noise_type_names",
    "readout",
    "snr_db_to_eta",
]
