"""Prediction API: load a model version; uint8 slices in; probability, label, mask, box, area out.

Slices go in at their native size in file channel order (as ``imaging.decode_image`` returns
them); they are resized to the model's input size here, and masks come back at the native size
(the segmenter's probability map is resized bilinearly, then cut at ``mask_threshold``).
By default a slice the classifier calls tumor-free gets an empty mask, so the label, the mask and
the box never disagree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from brain_tumor.ingest.imaging import resize_slice
from brain_tumor.scoring.geometry import mask_geometry
from brain_tumor.settings import Settings
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.storage import ObjectStore

if TYPE_CHECKING:  # inputs imports Keras; scoring through an engine never loads it
    from brain_tumor.ml.inputs import ArrayDataset

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model version ready to predict."""

    version: str
    record: dict
    classifier: object = field(repr=False)
    segmenter: object = field(repr=False)

    @property
    def image_size(self) -> int:
        return int(self.record["image_size"])

    @property
    def threshold(self) -> float:
        return float(self.record["threshold"])


@dataclass
class SlicePredictions:
    """Per-slice outputs of one prediction call (N slices)."""

    prob: np.ndarray  # N float
    label: np.ndarray  # N int (prob >= threshold)
    masks: list[np.ndarray]  # N native-size boolean masks
    geometry: list[dict]  # N of {area, bbox, centroid}


def load_model_version(store: ObjectStore, settings: Settings, version: str) -> LoadedModel:
    """Fetch a model version (cached locally) and load both models."""
    from brain_tumor.ml.models import load_model

    models = ModelStore(store, settings)
    record = models.record(version)
    folder = models.fetch(version)
    return LoadedModel(version, record, load_model(folder / "classifier.keras", compile=False),
                       load_model(folder / "segmenter.keras", compile=False))


def to_model_input(images: np.ndarray | list[np.ndarray], size: int) -> np.ndarray:
    """Resize native uint8 slices to the model's input size; float32 batch of raw 0..255."""
    if len(images) == 0:
        raise ValueError("no slices given")
    batch = np.stack([resize_slice(np.asarray(img), size) for img in images])
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"slices must be H x W x 3 uint8, received {batch.shape} {batch.dtype}")
    return batch.astype(np.float32)


def predict_batch(model: LoadedModel, x: np.ndarray, batch_size: int = 32,
                  flip: bool = False, seg_x: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Model-size float batch -> (tumor probabilities N, mask probability maps N x S x S).

    ``seg_x``: the segmenter's input when it differs from ``x`` (2.5D, ``ArrayDataset.
    segmenter_images``). ``flip``: test-time augmentation, the mean of the outputs on the slices
    and on their left-right mirror images (maps mirrored back).
    """
    seg_x = x if seg_x is None else seg_x
    prob = np.asarray(model.classifier.predict(x, batch_size=batch_size, verbose=0)).reshape(-1)
    maps = np.asarray(model.segmenter.predict(seg_x, batch_size=batch_size, verbose=0))[..., 0]
    if flip:
        def mirror(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.asarray(a)[:, :, ::-1])

        prob = (prob + np.asarray(model.classifier.predict(
            mirror(x), batch_size=batch_size, verbose=0)).reshape(-1)) / 2.0
        maps = (maps + np.asarray(model.segmenter.predict(
            mirror(seg_x), batch_size=batch_size, verbose=0))[..., 0][:, :, ::-1]) / 2.0
    return prob.astype(np.float64), maps


def predict_dataset(model: LoadedModel, data: ArrayDataset, batch_size: int = 32,
                    flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``predict_batch`` of an ``ArrayDataset`` prepared for the model (``inputs.for_model``)."""
    return predict_batch(model, data.images.astype(np.float32), batch_size, flip,
                         np.asarray(data.segmenter_images(), np.float32))


def native_mask(prob_map: np.ndarray, height: int, width: int, cut: float) -> np.ndarray:
    """A model-size probability map -> boolean mask at the slice's native size."""
    if prob_map.shape != (height, width):
        prob_map = cv2.resize(prob_map.astype(np.float32), (width, height),
                              interpolation=cv2.INTER_LINEAR)
    return prob_map >= cut


def postprocess(prob: np.ndarray, maps: np.ndarray, sizes: list[tuple[int, int]],
                threshold: float, mask_threshold: float = 0.5,
                gate_masks: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels and native-size masks from model outputs (empty mask where the label is 0)."""
    label = (np.asarray(prob) >= threshold).astype(int)
    masks = []
    for i, (h, w) in enumerate(sizes):
        if gate_masks and not label[i]:
            masks.append(np.zeros((h, w), bool))
        else:
            masks.append(native_mask(maps[i], h, w, mask_threshold))
    return label, masks


def predict_slices(model: LoadedModel, images: np.ndarray | list[np.ndarray], *,
                   batch_size: int = 32, mask_threshold: float = 0.5,
                   gate_masks: bool = True) -> SlicePredictions:
    """Predict every slice: probability, label, native-size mask and its geometry (the slices
    of one study, in slice order, when the segmenter reads neighbouring slices)."""
    from brain_tumor.ml.context import record_context, with_context

    x = to_model_input(images, model.image_size)
    context = record_context(model.record)
    prob, maps = predict_batch(model, x, batch_size,
                               seg_x=with_context(x, context) if context else None)
    sizes = [tuple(np.asarray(img).shape[:2]) for img in images]
    label, masks = postprocess(prob, maps, sizes, model.threshold, mask_threshold, gate_masks)
    return SlicePredictions(prob, label, masks, [mask_geometry(m) for m in masks])
