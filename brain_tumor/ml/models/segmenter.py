"""Tumor segmenters built with Keras 3 layers only.

``build_segmenter``: the U-Net of Buda et al. 2019 (its own encoder). ``build_backbone_segmenter``:
a U-Net decoder on the classifier's backbone (ResNet50, or the tiny test stack) — one backbone
for both tasks; ``copy_encoder_weights`` starts its encoder from a trained classifier's.
"""

from __future__ import annotations

import logging

import keras
from keras import layers

from brain_tumor.ml.models.classifier import (
    BACKBONE_NAME,
    build_backbone,
    get_backbone,
    preprocessing_layer,
)
from brain_tumor.scoring.geometry import mask_geometry, study_volume

logger = logging.getLogger(__name__)

__all__ = ["BACKBONE_SKIPS", "build_backbone_segmenter", "build_segmenter",
           "copy_encoder_weights", "mask_geometry", "study_volume"]

#: per backbone: the layers the decoder joins (finest first, each half the size of the one
#: before, the first at half the input size) and the deepest one it starts from
BACKBONE_SKIPS: dict[str, tuple[tuple[str, ...], str]] = {
    "resnet50": (("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
                 "conv5_block3_out"),
    "tiny": (("tiny_block1_relu", "tiny_block2_relu"), "tiny_top_relu"),
}


def _conv_block(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    """Two Conv3x3-BN-ReLU layers."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        # momentum 0.9: moving statistics follow weights trained from scratch (see classifier)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_segmenter(image_size: int = 256, base_filters: int = 16, depth: int = 4,
                    channels: int = 3) -> keras.Model:
    """U-Net on raw 0..255 slices (rescaled inside) -> (H, W, 1) sigmoid output "tumor_mask".

    channels: 3 (the slice), or 3 + 2k with k neighbouring FLAIR slices on each side (2.5D,
    ``brain_tumor.ml.context``).
    """
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    if not isinstance(base_filters, int) or base_filters < 1:
        raise ValueError(f"base_filters must be an int >= 1, got {base_filters!r}")
    if not isinstance(channels, int) or channels < 3:
        raise ValueError(f"channels must be an int >= 3, got {channels!r}")
    if image_size % (2**depth):
        raise ValueError(
            f"image_size must be divisible by 2**depth = {2**depth}, got image_size={image_size}"
        )
    inputs = keras.Input((image_size, image_size, channels), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    skips = []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2**level, name=f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _conv_block(x, base_filters * 2**depth, name="bottleneck")
    outputs = _decode(x, skips, base_filters)
    model = keras.Model(inputs, outputs, name="tumor_segmenter")
    logger.debug("built U-Net image_size=%d base=%d depth=%d channels=%d", image_size,
                 base_filters, depth, channels)
    return model


def _decode(x: keras.KerasTensor, skips: list[keras.KerasTensor], base_filters: int
            ) -> keras.KerasTensor:
    """Up-convolve from the deepest features through each skip (coarsest first) to a 1-channel
    sigmoid mask; skip ``level`` has ``base_filters * 2**level`` filters after its join."""
    for level in reversed(range(len(skips))):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = _conv_block(x, filters, name=f"dec{level}")
    logits = layers.Conv2D(1, 1, name="logits")(x)
    return layers.Activation("sigmoid", dtype="float32", name="tumor_mask")(logits)


def build_backbone_segmenter(image_size: int = 256, backbone: str = "resnet50",
                             pretrained: bool = False, base_filters: int = 16) -> keras.Model:
    """U-Net decoder on the classifier's backbone -> (H, W, 1) sigmoid output "tumor_mask".

    The encoder is the backbone (nested, named ``backbone``, with the classifier's preprocessing:
    caffe when ``pretrained``, else Rescaling(1/255)); the decoder joins its stages listed in
    ``BACKBONE_SKIPS`` and a full-size Conv-BN-ReLU stem on the rescaled input. Raw 0..255 slices.
    """
    if backbone not in BACKBONE_SKIPS:
        raise ValueError(f"backbone must be one of {tuple(BACKBONE_SKIPS)}, got {backbone!r}")
    if not isinstance(base_filters, int) or base_filters < 1:
        raise ValueError(f"base_filters must be an int >= 1, got {base_filters!r}")
    skip_names, deepest = BACKBONE_SKIPS[backbone]
    stride = 2 ** (len(skip_names) + 1)
    if not isinstance(image_size, int) or image_size <= 0 or image_size % stride:
        raise ValueError(f"the {backbone} encoder needs an image_size divisible by {stride}, "
                         f"got {image_size!r}")
    # built empty, its weights copied from the classifier's: BatchNorm keeps the momentum the
    # classifier's backbone trained with (pretrained weights move slowly)
    base = build_backbone(backbone, image_size, from_scratch=not pretrained)
    encoder = keras.Model(base.inputs,
                          [base.get_layer(name).output for name in (*skip_names, deepest)],
                          name=BACKBONE_NAME)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    *stages, x = encoder(preprocessing_layer(pretrained)(inputs))
    stem = _conv_block(layers.Rescaling(1.0 / 255.0, name="stem_rescale")(inputs), base_filters,
                       name="stem")
    model = keras.Model(inputs, _decode(x, [stem, *stages], base_filters),
                        name=f"tumor_segmenter_{backbone}")
    logger.debug("built %s-encoder U-Net image_size=%d base=%d", backbone, image_size,
                 base_filters)
    return model


def copy_encoder_weights(segmenter: keras.Model, classifier: keras.Model) -> int:
    """Set the segmenter's encoder to the classifier's backbone weights; returns layers copied.

    Both must come from the same backbone and preprocessing (``build_classifier`` and
    ``build_backbone_segmenter`` with the same backbone and weights choice).
    """
    pre = (type(segmenter.get_layer("preprocess")), type(classifier.get_layer("preprocess")))
    if pre[0] is not pre[1]:
        raise ValueError(f"the segmenter preprocesses with {pre[0].__name__} but the classifier "
                         f"with {pre[1].__name__}: build both with the same weights choice")
    source, target = get_backbone(classifier), get_backbone(segmenter)
    copied = 0
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            twin = source.get_layer(layer.name)
        except ValueError as err:
            raise ValueError(f"the classifier's backbone has no layer {layer.name!r}: "
                             f"segmenter {segmenter.name!r}, classifier {classifier.name!r}"
                             ) from err
        layer.set_weights(twin.get_weights())
        copied += 1
    logger.info("segmenter encoder starts from the classifier's backbone (%d layers)", copied)
    return copied
