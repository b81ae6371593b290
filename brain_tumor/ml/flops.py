"""Multiply-accumulates (MACs) of one forward pass of a Keras model, counted from its layers.

Convolutions (plain, transposed, depthwise, separable) and dense layers are counted; batch
normalisation, activations, pooling, additions and resizing cost a few operations per value
and are left out (under 1% of a convolutional network). One MAC is two floating-point
operations: ``flops = 2 * macs``. Counts are per input sample (batch size 1).
"""

from __future__ import annotations

import math
from typing import Any


def _shape(tensor_or_shape: Any) -> tuple[int, ...]:
    """A symbolic tensor's shape without the batch axis; unknown sizes are an error."""
    shape = tuple(getattr(tensor_or_shape, "shape", tensor_or_shape))[1:]
    if any(dim is None for dim in shape):
        raise ValueError(f"MACs need fixed input sizes, received shape {shape}")
    return tuple(int(dim) for dim in shape)


def layer_macs(layer: Any) -> int:
    """MACs of one (non-nested) layer for one sample; 0 for the layers left out."""
    from keras import layers

    name = type(layer).__name__
    if isinstance(layer, layers.SeparableConv2D):
        out = _shape(layer.output)
        k_h, k_w = layer.kernel_size
        channels = _shape(layer.input)[-1]
        depthwise = out[0] * out[1] * channels * layer.depth_multiplier * k_h * k_w
        return depthwise + out[0] * out[1] * channels * layer.depth_multiplier * out[-1]
    if isinstance(layer, layers.DepthwiseConv2D):
        out = _shape(layer.output)
        k_h, k_w = layer.kernel_size
        return math.prod(out) * k_h * k_w
    if isinstance(layer, layers.Conv2DTranspose):
        in_shape = _shape(layer.input)
        k_h, k_w = layer.kernel_size
        return in_shape[0] * in_shape[1] * in_shape[2] * k_h * k_w * layer.filters
    if isinstance(layer, layers.Conv2D):
        out = _shape(layer.output)
        k_h, k_w = layer.kernel_size
        channels = _shape(layer.input)[-1]
        return out[0] * out[1] * out[2] * k_h * k_w * channels // layer.groups
    if isinstance(layer, layers.Dense):
        in_shape = _shape(layer.input)
        return math.prod(in_shape) * layer.units
    if name in ("Conv1D", "Conv3D", "Conv1DTranspose", "Conv3DTranspose", "EinsumDense"):
        raise ValueError(f"MACs of {name} layers are not counted; received layer {layer.name!r}")
    return 0


def model_macs(model: Any) -> int:
    """MACs of one forward pass of a (functional) Keras model for one sample, nested models too."""
    total = 0
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            total += model_macs(layer)
        else:
            total += layer_macs(layer)
    return total


def model_flops(model: Any) -> int:
    """Floating-point operations of one forward pass for one sample (2 per MAC)."""
    return 2 * model_macs(model)
