"""Quantizers: sign binarisation with straight-through estimators, fixed-point formats."""

from binsense.quant.sign import (
    SignQuantizer,
    SteSign,
    SwishSign,
    TriangleSign,
    get_quantizer,
    quantizer_names,
)

__all__ = [
    "SignQuantizer",
    "SteSign",
    "SwishSign",
    "TriangleSign",
    "get_quantizer",
    "quantizer_names",
]
