"""Training-time layers: binary convolution / linear with injected quantizers, the binary
block and residual unit, block norms, channel shuffle and global pooling, batch-norm
quantization, the DeSign activation.

Folding into the deployed integer form lives in :mod:`binsense.deploy`.
"""

from binsense.layers.binary import (
    BinaryConv2d,
    BinaryLinear,
    clip_latent_weights,
    has_binary_weights,
    is_binary_layer,
)
from binsense.layers.block import BinaryBlock, ResidualUnit, Shortcut, blocks_of
from binsense.layers.bn import (
    BN_TARGETS,
    QuantizedBatchNorm,
    bn_quantized,
    fold_bn_affine,
    quantize_bn,
    replace_batchnorm,
)
from binsense.layers.design import (
    LEVEL_TO_THRESHOLD,
    DeSign,
    design_kernel_names,
    design_thresholds,
    get_design_kernel,
    levels_to_thresholds,
)
from binsense.layers.norm import NORMS, ChannelAffine, bn_sigma, make_norm
from binsense.layers.shape import ChannelShuffle, GlobalPool

__all__ = [
    "BN_TARGETS",
    "LEVEL_TO_THRESHOLD",
    "NORMS",
    "BinaryBlock",
    "BinaryConv2d",
    "BinaryLinear",
    "ChannelAffine",
    "ChannelShuffle",
    "DeSign",
    "GlobalPool",
    "QuantizedBatchNorm",
    "ResidualUnit",
    "Shortcut",
    "blocks_of",
    "bn_quantized",
    "bn_sigma",
    "clip_latent_weights",
    "design_kernel_names",
    "design_thresholds",
    "fold_bn_affine",
    "get_design_kernel",
    "has_binary_weights",
    "is_binary_layer",
    "levels_to_thresholds",
    "make_norm",
    "quantize_bn",
    "replace_batchnorm",
]
