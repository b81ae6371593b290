"""Slice-level tumor classifier: ResNet50 (or a tiny test backbone) + dense head, Keras 3 only.

Input: raw 0..255 slices, channels in file order (pre-contrast, FLAIR, post-contrast) read as RGB.
Preprocessing lives inside the model, so saved ``.keras`` files take raw slices.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import keras
from keras import layers, ops

logger = logging.getLogger(__name__)

BACKBONES = ("resnet50", "tiny")
TRAINABLE_MODES = ("frozen", "top", "all")
BACKBONE_NAME = "backbone"
# Layers of the last backbone stage, unfrozen by set_backbone_trainable(model, "top").
TOP_STAGE_PREFIXES = ("conv5_", "tiny_top_")
# Per-channel BGR means of keras.applications' "caffe" preprocessing (ResNet50).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
RESNET50_MIN_SIZE = 32


@keras.saving.register_keras_serializable(package="brain_tumor")
class CaffePreprocessing(layers.Layer):
    """RGB -> BGR and ImageNet mean subtraction, as keras.applications.resnet50.preprocess_input."""

    def call(self, inputs: Any) -> Any:
        """Flip the channel axis and subtract the BGR mean."""
        x = ops.flip(ops.cast(inputs, self.compute_dtype), axis=-1)
        return x - ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        """Same shape as the input."""
        return input_shape


SCRATCH_BN_MOMENTUM = 0.9


def _check_weights(weights: str | os.PathLike | None, backbone: str) -> str | None:
    if weights is None:
        return None
    weights = os.fspath(weights)
    if weights == "imagenet":
        if backbone == "tiny":
            raise ValueError("the 'tiny' backbone has no ImageNet weights; give it None or a "
                             f".h5 file of a tiny backbone's weights, got {weights!r}")
        return weights
    if not weights.endswith(".h5"):
        raise ValueError(f"weights must be None, 'imagenet' or a .h5 file path, got {weights!r}")
    if not os.path.isfile(weights):
        raise ValueError(f"weights file does not exist: {weights!r}")
    return weights


def _tiny_backbone(image_size: int) -> keras.Model:
    """A few strided Conv-BN-ReLU blocks; fast stand-in for ResNet50 in tests."""
    inputs = keras.Input((image_size, image_size, 3), name="backbone_input")
    x = inputs
    names = ("tiny_block1", "tiny_block2", "tiny_top")
    for filters, name in zip((8, 16, 32), names, strict=True):
        x = layers.Conv2D(
            filters, 3, strides=2, padding="same", use_bias=False, name=f"{name}_conv"
        )(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        x = layers.ReLU(name=f"{name}_relu")(x)
    return keras.Model(inputs, x, name=BACKBONE_NAME)


def build_backbone(backbone: str, image_size: int,
                   weights: str | os.PathLike | None = None,
                   from_scratch: bool | None = None) -> keras.Model:
    """The backbone sub-model named ``backbone``: ResNet50 without its top, or the tiny stack.

    weights: None, "imagenet" or a ``.h5`` file of the backbone's weights. Built from scratch,
    its BatchNorm layers follow their batches faster (``SCRATCH_BN_MOMENTUM``).
    from_scratch: whether the weights it will train from are its own initial ones (default: no
    ``weights``); False for a backbone built empty that receives pretrained weights later.
    """
    if from_scratch is None:
        from_scratch = weights is None
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if backbone == "resnet50" and image_size < RESNET50_MIN_SIZE:
        raise ValueError(f"resnet50 needs image_size >= {RESNET50_MIN_SIZE}, got {image_size}")
    weights = _check_weights(weights, backbone)
    shape = (image_size, image_size, 3)
    if backbone == "tiny":
        base = _tiny_backbone(image_size)
        if weights is not None:
            base.load_weights(weights)
    else:
        logger.info("building ResNet50 backbone weights=%s input=%s", weights, shape)
        base = keras.applications.ResNet50(
            include_top=False, weights=weights, input_shape=shape, name=BACKBONE_NAME
        )
    if from_scratch:
        # From scratch the weights move fast; BatchNorm's moving statistics must follow them or
        # inference-mode outputs collapse to one class for the first epochs (0.99 lags ~100 steps).
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    return base


def preprocessing_layer(pretrained: bool) -> layers.Layer:
    """The model's own input preprocessing: Rescaling(1/255) from scratch, ImageNet's caffe
    preprocessing for pretrained weights (layer name ``preprocess``)."""
    if pretrained:
        return CaffePreprocessing(name="preprocess")
    return layers.Rescaling(1.0 / 255.0, name="preprocess")


def build_classifier(
    image_size: int = 256,
    weights: str | os.PathLike | None = None,
    backbone: str = "resnet50",
    dense_units: int = 256,
    dropout: float = 0.3,
) -> keras.Model:
    """Binary tumor classifier on raw 0..255 RGB slices; output "tumor_probability" in [0, 1].

    weights: None (from scratch, Rescaling(1/255)), "imagenet" (downloads; caffe preprocessing)
    or a path to a ``.h5``/``.weights.h5`` file of the backbone's weights (caffe preprocessing).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if backbone == "resnet50" and image_size < RESNET50_MIN_SIZE:
        raise ValueError(f"resnet50 needs image_size >= {RESNET50_MIN_SIZE}, got {image_size}")
    if not isinstance(dense_units, int) or dense_units <= 0:
        raise ValueError(f"dense_units must be a positive int, got {dense_units!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be within [0, 1), got {dropout!r}")
    weights = _check_weights(weights, backbone)

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = preprocessing_layer(weights is not None)(inputs)
    base = build_backbone(backbone, image_size, weights)
    x = base(x)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="tumor_probability")(x)
    return keras.Model(inputs, outputs, name=f"tumor_classifier_{backbone}")


def get_backbone(model: keras.Model) -> keras.Model:
    """The nested backbone sub-model of a classifier built by build_classifier."""
    try:
        return model.get_layer(BACKBONE_NAME)
    except ValueError as err:
        raise ValueError(f"model {model.name!r} has no layer named {BACKBONE_NAME!r}") from err


def set_backbone_trainable(model: keras.Model, mode: str) -> None:
    """Freeze the backbone ("frozen"), unfreeze only its last stage ("top", BN kept frozen) or all.

    Changes take effect at the next ``compile``: call this before (re)compiling the model.
    """
    if mode not in TRAINABLE_MODES:
        raise ValueError(f"mode must be one of {TRAINABLE_MODES}, got {mode!r}")
    base = get_backbone(model)
    if mode == "frozen":
        base.trainable = False
    elif mode == "all":
        base.trainable = True
        for layer in base.layers:
            layer.trainable = True
    else:
        base.trainable = True
        for layer in base.layers:
            layer.trainable = layer.name.startswith(TOP_STAGE_PREFIXES) and not isinstance(
                layer, layers.BatchNormalization
            )
    n_train = sum(math.prod(w.shape) for w in model.trainable_weights)
    logger.info("backbone mode=%s: %d trainable parameters", mode, n_train)
