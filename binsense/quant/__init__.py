"""Quantizers: sign binarisation with straight-through estimators, fixed-point formats."""

from binsense.quant.fixed import (
    FLOAT_BITS,
    FixedQuantizer,
    auto_frac_bits,
    check_bits,
    quantize_fixed,
    quantize_fixed_ste,
)
from binsense.quant.sign import (
    SignQuantizer,
    SteSign,
    SwishSign,
    TriangleSign,
    get_quantizer,
    quantizer_names,
)

__all__ = [
    "FLOAT_BITS",
    "FixedQuantizer",
    "SignQuantizer",
    "SteSign",
    "SwishSign",
    "TriangleSign",
    "auto_frac_bits",
    "check_bits",
    "get_quantizer",
    "quantize_fixed",
    "quantize_fixed_ste",
    "quantizer_names",
]
