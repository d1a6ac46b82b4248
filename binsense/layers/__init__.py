"""Layers: binary convolution / linear with injected quantizers; batch-norm quantization."""

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

__all__ = [
    "BN_TARGETS",
    "BinaryConv2d",
    "BinaryLinear",
    "QuantizedBatchNorm",
    "bn_quantized",
    "bn_sigma",
    "clip_latent_weights",
    "fold_bn_affine",
    "fold_bn_sign",
    "is_binary_layer",
    "quantize_bn",
    "replace_batchnorm",
    "threshold_sign",
]
