"""Segmentation loss and metric (keras.ops only, backend-agnostic, registered for .keras reload)."""

from __future__ import annotations

import logging
from typing import Any

import keras
from keras import ops

logger = logging.getLogger(__name__)

SMOOTH = 1.0


def _flatten_per_sample(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    batch = ops.shape(y_pred)[0]
    return ops.reshape(y_true, (batch, -1)), ops.reshape(y_pred, (batch, -1))


@keras.saving.register_keras_serializable(package="brain_tumor")
def dice_coefficient(y_true: Any, y_pred: Any) -> Any:
    """Soft Dice per sample, (2*sum(t*p) + 1) / (sum(t) + sum(p) + 1); shape (batch,)."""
    t, p = _flatten_per_sample(y_true, y_pred)
    inter = ops.sum(t * p, axis=-1)
    return (2.0 * inter + SMOOTH) / (ops.sum(t, axis=-1) + ops.sum(p, axis=-1) + SMOOTH)


@keras.saving.register_keras_serializable(package="brain_tumor")
def bce_dice_loss(y_true: Any, y_pred: Any) -> Any:
    """Per-sample mean binary cross-entropy plus (1 - soft Dice); shape (batch,)."""
    t, p = _flatten_per_sample(y_true, y_pred)
    bce = ops.mean(ops.binary_crossentropy(t, p, from_logits=False), axis=-1)
    return bce + (1.0 - dice_coefficient(y_true, y_pred))
