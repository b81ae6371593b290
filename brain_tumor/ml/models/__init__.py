"""Keras 3 models: slice classifier, segmenters (U-Net; U-Net on the classifier's backbone),
their custom losses and layers.

Importing this package registers the custom objects needed to reload ``.keras`` files.
"""

from __future__ import annotations

import logging
import os

import keras

from brain_tumor.ml.models import losses
from brain_tumor.ml.models.classifier import (
    CaffePreprocessing,
    build_classifier,
    get_backbone,
    set_backbone_trainable,
)
from brain_tumor.ml.models.losses import (
    batch_dice_bce_loss,
    bce_dice_loss,
    dice_coefficient,
    segmenter_loss,
)
from brain_tumor.ml.models.segmenter import (
    build_backbone_segmenter,
    build_segmenter,
    copy_encoder_weights,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CaffePreprocessing",
    "batch_dice_bce_loss",
    "bce_dice_loss",
    "build_backbone_segmenter",
    "build_classifier",
    "build_segmenter",
    "copy_encoder_weights",
    "dice_coefficient",
    "get_backbone",
    "load_model",
    "losses",
    "segmenter_loss",
    "set_backbone_trainable",
]


def load_model(path: str | os.PathLike, compile: bool = True) -> keras.Model:
    """Load a ``.keras`` model saved from this package (custom objects are registered here)."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"expected a .keras file, got {path!r}")
    return keras.saving.load_model(path, compile=compile)
