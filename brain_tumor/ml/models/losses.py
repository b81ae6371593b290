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


@keras.saving.register_keras_serializable(package="brain_tumor")
def batch_dice(y_true: Any, y_pred: Any) -> Any:
    """Soft Dice over the whole batch as one volume, (2*sum(t*p) + 1) / (sum(t) + sum(p) + 1)."""
    t, p = _flatten_per_sample(y_true, y_pred)
    return (2.0 * ops.sum(t * p) + SMOOTH) / (ops.sum(t) + ops.sum(p) + SMOOTH)


@keras.saving.register_keras_serializable(package="brain_tumor")
def batch_dice_bce_loss(y_true: Any, y_pred: Any) -> Any:
    """Per-sample mean binary cross-entropy plus (1 - batch soft Dice); shape (batch,).

    Empty slices add to the Dice only through their false-positive pixels, so a batch of mostly
    empty slices does not push every prediction to zero.
    """
    t, p = _flatten_per_sample(y_true, y_pred)
    bce = ops.mean(ops.binary_crossentropy(t, p, from_logits=False), axis=-1)
    return bce + (1.0 - batch_dice(y_true, y_pred))


#: the segmenter losses by setting value (``seg_loss``)
SEGMENTER_LOSSES = {"per_sample_dice": bce_dice_loss, "batch_dice_bce": batch_dice_bce_loss}


def segmenter_loss(name: str) -> Any:
    """The segmenter loss function named by the ``seg_loss`` setting."""
    if name not in SEGMENTER_LOSSES:
        raise ValueError(f"seg_loss must be one of {tuple(SEGMENTER_LOSSES)}, received {name!r}")
    return SEGMENTER_LOSSES[name]
