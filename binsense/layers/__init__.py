"""Layers: binary convolution / linear with injected quantizers."""

from binsense.layers.binary import (
    BinaryConv2d,
    BinaryLinear,
    clip_latent_weights,
    is_binary_layer,
)

__all__ = ["BinaryConv2d", "BinaryLinear", "clip_latent_weights", "is_binary_layer"]
