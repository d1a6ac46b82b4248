"""Layers: binary convolution / linear with injected quantizers; batch-norm quantization;
the DeSign dithered-sign activation."""

from binsense.layers.binary import (
    BinaryConv2d,
    BinaryLinear,
    clip_latent_weights,
    is_binary_layer,
)
from binsense.layers.bn import (
    BN_TARGETS,
    QuantizedBatchNorm,
    bn_quantized,
    bn_sigma,
    fold_bn_affine,
    fold_bn_sign,
    quantize_bn,
    replace_batchnorm,
    threshold_sign,
)
from binsense.layers.design import (
    LEVEL_TO_THRESHOLD,
    DeSign,
    design_kernel_names,
    design_thresholds,
    fold_bn_design,
    get_design_kernel,
    levels_to_thresholds,
    threshold_design,
)

__all__ = [
    "BN_TARGETS",
    "LEVEL_TO_THRESHOLD",
    "BinaryConv2d",
    "BinaryLinear",
    "DeSign",
    "QuantizedBatchNorm",
    "bn_quantized",
    "bn_sigma",
    "clip_latent_weights",
    "design_kernel_names",
    "design_thresholds",
    "fold_bn_affine",
    "fold_bn_design",
    "fold_bn_sign",
    "get_design_kernel",
    "is_binary_layer",
    "levels_to_thresholds",
    "quantize_bn",
    "replace_batchnorm",
    "threshold_design",
    "threshold_sign",
]
