"""U-Net tumor segmenter (Buda et al. 2019 style) built with Keras 3 layers only."""

from __future__ import annotations

import logging

import keras
from keras import layers

from brain_tumor.scoring.geometry import mask_geometry, study_volume

logger = logging.getLogger(__name__)

__all__ = ["build_segmenter", "mask_geometry", "study_volume"]


def _conv_block(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    """Two Conv3x3-BN-ReLU layers."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        # momentum 0.9: moving statistics follow weights trained from scratch (see classifier)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_segmenter(image_size: int = 256, base_filters: int = 16, depth: int = 4) -> keras.Model:
    """U-Net on raw 0..255 RGB slices (rescaled inside) -> (H, W, 1) sigmoid output "tumor_mask"."""
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    if not isinstance(base_filters, int) or base_filters < 1:
        raise ValueError(f"base_filters must be an int >= 1, got {base_filters!r}")
    if image_size % (2**depth):
        raise ValueError(
            f"image_size must be divisible by 2**depth = {2**depth}, got image_size={image_size}"
        )
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    skips = []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2**level, name=f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _conv_block(x, base_filters * 2**depth, name="bottleneck")
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = _conv_block(x, filters, name=f"dec{level}")
    logits = layers.Conv2D(1, 1, name="logits")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="tumor_mask")(logits)
    model = keras.Model(inputs, outputs, name="tumor_segmenter")
    logger.debug("built U-Net image_size=%d base=%d depth=%d", image_size, base_filters, depth)
    return model
