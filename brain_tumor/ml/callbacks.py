"""Training callbacks measured on what the detector is judged by: per-patient Dice.

``PatientDice`` predicts the validation patients' slices after every epoch, cuts the maps at the
mask threshold, stacks each patient's slices as one volume and logs the mean Dice over patients
as ``val_patient_dice`` (the classifier is not involved). Callbacks after it in the list
(checkpoint, early stopping, learning-rate plateau) can monitor that value.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

log = logging.getLogger(__name__)

PATIENT_DICE = "val_patient_dice"


def patient_dice_scores(patient_ids: np.ndarray, true_masks: np.ndarray, pred_masks: np.ndarray
                        ) -> dict[str, float]:
    """Dice per patient over its stacked slices; 1.0 when both volumes are empty."""
    ids = np.asarray(patient_ids).astype(str)
    true = np.asarray(true_masks).astype(bool).reshape(len(ids), -1)
    pred = np.asarray(pred_masks).astype(bool).reshape(len(ids), -1)
    if true.shape != pred.shape:
        raise ValueError(f"true masks {np.shape(true_masks)} and predicted masks "
                         f"{np.shape(pred_masks)} differ")
    names, group = np.unique(ids, return_inverse=True)
    inter = np.bincount(group, (true & pred).sum(axis=1), minlength=len(names))
    total = np.bincount(group, true.sum(axis=1) + pred.sum(axis=1), minlength=len(names))
    dice = np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)
    return {str(n): float(d) for n, d in zip(names, dice, strict=True)}


class PatientDice(keras.callbacks.Callback):
    """Logs the mean per-patient validation Dice as ``val_patient_dice`` after each epoch.

    ``best`` and ``best_epoch`` (1-based) track the best epoch seen so far.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, patient_ids: np.ndarray, *,
                 batch_size: int = 32, mask_threshold: float = 0.5) -> None:
        super().__init__()
        if len(images) == 0 or len(images) != len(masks) or len(images) != len(patient_ids):
            raise ValueError(f"need one mask and one patient id per validation slice, received "
                             f"{len(images)} images, {len(masks)} masks, "
                             f"{len(patient_ids)} ids")
        if not 0 < mask_threshold < 1:
            raise ValueError(f"mask_threshold must be in (0, 1), received {mask_threshold!r}")
        self.images, self.masks = images, np.asarray(masks) > 0
        self.patient_ids = np.asarray(patient_ids).astype(str)
        self.batch_size, self.mask_threshold = batch_size, mask_threshold
        self.best, self.best_epoch = -np.inf, 0
        self.history: list[float] = []

    def score(self) -> float:
        """The current model's mean per-patient Dice on the validation slices."""
        maps = np.asarray(self.model.predict(self.images.astype(np.float32),
                                             batch_size=self.batch_size, verbose=0))
        pred = maps.reshape(self.masks.shape) >= self.mask_threshold
        return float(np.mean(list(patient_dice_scores(self.patient_ids, self.masks,
                                                      pred).values())))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Score the epoch and put ``val_patient_dice`` into the shared logs."""
        value = self.score()
        self.history.append(value)
        if logs is not None:
            logs[PATIENT_DICE] = value
        if value > self.best:
            self.best, self.best_epoch = value, epoch + 1
        log.debug("epoch %d: %s %.4f (best %.4f at epoch %d)", epoch + 1, PATIENT_DICE, value,
                  self.best, self.best_epoch)
