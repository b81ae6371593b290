"""Post-processing: raw predictions of a whole study to labels and native-size masks (third seam).

Two rules, picked per model version by ``post_processor`` from its ``model.json``:

``WholeStudy`` (model versions with a ``postprocess`` field, parameters tuned on validation
patients by ``brain_tumor.evaluation.tuning``). At the model's input size:

1. every slice's segmenter map is cut at ``mask_threshold`` and the slices are stacked in slice
   order into one volume;
2. the volume's 3D connected components are found with full (26-) connectivity, so a tumor
   whose outline shifts diagonally from one slice to the next stays one component; the largest
   component is kept, and every other holding at least ``keep_fraction`` of its voxels;
   the others are dropped (``components_dropped`` in summary.json);
3. a slice whose remaining mask is smaller than ``min_area_fraction`` of the slice's pixels is
   emptied, unless the classifier calls the slice tumor (probability >= the model's decision
   threshold): the classifier lowers the bar for small masks, it never adds a mask;
4. the masks are taken to each slice's native size (the map, restricted to the kept pixels and
   their neighbours, resized bilinearly and cut at ``mask_threshold``), and a slice's final
   label is 1 exactly when its native mask is not empty.

So the U-Net finds tumor slices the classifier missed, a confident classifier cannot keep a
slice with an empty mask, and label, mask and box never disagree. Evaluation, the promotion
gate, tuning and scoring all run this same code (``postprocess_groups`` applies a rule to many
studies at once, each patient's slices in slice order).

Each slice also gets a **tumor score** (``tumor_score``): the stronger of the two models'
evidence, the classifier's probability or the peak of the segmenter's probability map. It ranks
slices (the slice ROC-AUC is computed on it) and is stored beside the classifier's probability;
it is not a calibrated probability. It was chosen on validation patients against the classifier
probability alone, the map's peak alone and their mean
(``brain_tumor.evaluation.tuning.score_ablation``).

``SliceThreshold`` is the rule for model versions without post-processing parameters: each
slice on its own, the classifier decides, the segmenter draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
from scipy import ndimage

from brain_tumor.ml.predict import postprocess
from brain_tumor.scoring.contracts import RawPrediction, Study, StudyPrediction
from brain_tumor.scoring.geometry import mask_geometry
from brain_tumor.settings import Settings

#: full 3D connectivity: faces, edges and corners (26 neighbours)
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
_RING = np.ones((3, 3), dtype=bool)


class ArrayRule(Protocol):
    """A post-processing rule on one study's arrays (model-size maps, slices in slice order)."""

    name: str

    def apply(self, prob: np.ndarray, maps: np.ndarray, sizes: Sequence[tuple[int, int]],
              threshold: float) -> StudyPrediction:
        """Final per-slice results of one study."""
        ...

    def params(self) -> dict[str, Any]:
        """The rule's parameters (JSON-ready)."""
        ...


def tumor_score(prob: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Per slice, the larger of the classifier probability and the segmenter map's peak."""
    prob = np.asarray(prob, dtype=np.float64).ravel()
    maps = np.asarray(maps)
    if maps.ndim != 3 or len(maps) != prob.size:
        raise ValueError(f"need one N x S x S map per probability, received {prob.size} "
                         f"probabilities and maps of shape {maps.shape}")
    peak = maps.reshape(len(maps), -1).max(axis=1) if maps.size else np.zeros(prob.size)
    return np.maximum(prob, peak.astype(np.float64))


def _check_inputs(prob: np.ndarray, maps: np.ndarray, sizes: Sequence[tuple[int, int]]) -> None:
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise ValueError(f"maps must be N x S x S, received shape {maps.shape}")
    if not (prob.shape[0] == maps.shape[0] == len(sizes)):
        raise ValueError(f"{prob.shape[0]} probabilities, {maps.shape[0]} maps and {len(sizes)} "
                         "sizes: one of each per slice")


class SliceThreshold:
    """Each slice on its own: the classifier decides, the segmenter draws."""

    name = "slice_threshold"

    def __init__(self, mask_threshold: float = 0.5, gate_masks: bool = True) -> None:
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), received {mask_threshold}")
        self.mask_threshold = mask_threshold
        self.gate_masks = gate_masks

    def params(self) -> dict[str, Any]:
        """The rule's parameters."""
        return {"mask_threshold": self.mask_threshold, "gate_masks": self.gate_masks}

    def apply(self, prob: np.ndarray, maps: np.ndarray, sizes: Sequence[tuple[int, int]],
              threshold: float) -> StudyPrediction:
        """Labels from the threshold, masks from the maps at each slice's native size."""
        prob, maps = np.asarray(prob, dtype=np.float64).ravel(), np.asarray(maps)
        _check_inputs(prob, maps, sizes)
        label, masks = postprocess(prob, maps, list(sizes), threshold, self.mask_threshold,
                                   self.gate_masks)
        return StudyPrediction(prob, label, masks, [mask_geometry(m) for m in masks],
                               score=tumor_score(prob, maps))

    def __call__(self, raw: RawPrediction, study: Study, threshold: float) -> StudyPrediction:
        """The study's final per-slice results."""
        return self.apply(raw.prob, raw.maps, study.sizes, threshold)


def keep_components(volume: np.ndarray, keep_fraction: float) -> tuple[np.ndarray, int, int]:
    """The largest 3D component of a boolean N x S x S volume and every other of at least
    ``keep_fraction`` of its size; returns (kept volume, components found, components dropped)."""
    volume = np.asarray(volume, dtype=bool)
    if volume.ndim != 3:
        raise ValueError(f"volume must be N x S x S, received shape {volume.shape}")
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], received {keep_fraction}")
    labels, found = ndimage.label(volume, structure=CONNECTIVITY)
    if found == 0:
        return volume.copy(), 0, 0
    sizes = np.bincount(labels.ravel())[1:]
    keep = sizes >= keep_fraction * sizes.max()
    kept = np.concatenate([[False], keep])[labels]
    return kept, int(found), int(found - keep.sum())


def drop_small(volume: np.ndarray, prob: np.ndarray, threshold: float,
               min_area_fraction: float) -> tuple[np.ndarray, int]:
    """Empty each slice whose mask is under the minimum area, unless the classifier calls it
    tumor (prob >= threshold); returns (volume, slices emptied)."""
    volume = np.array(volume, dtype=bool)
    if not 0.0 <= min_area_fraction < 1.0:
        raise ValueError(f"min_area_fraction must be in [0, 1), received {min_area_fraction}")
    min_area = min_area_fraction * volume.shape[1] * volume.shape[2]
    area = volume.reshape(volume.shape[0], -1).sum(axis=1)
    small = (area > 0) & (area < min_area) & (np.asarray(prob) < threshold)
    volume[small] = False
    return volume, int(small.sum())


def to_native(prob_map: np.ndarray, keep: np.ndarray, height: int, width: int,
              cut: float) -> np.ndarray:
    """A model-size map restricted to the kept pixels (and their neighbours) -> native mask."""
    if not keep.any():
        return np.zeros((height, width), bool)
    ring = ndimage.binary_dilation(keep, structure=_RING)
    restricted = np.where(ring, prob_map, 0.0).astype(np.float32)
    if restricted.shape != (height, width):
        restricted = cv2.resize(restricted, (width, height), interpolation=cv2.INTER_LINEAR)
    return restricted >= cut


@dataclass(frozen=True)
class WholeStudy:
    """One study as a volume: 3D components, small masks dropped, labels from the final masks."""

    mask_threshold: float = 0.5
    min_area_fraction: float = 0.0
    keep_fraction: float = 0.1
    name = "whole_study"

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), received {self.mask_threshold}")
        if not 0.0 <= self.min_area_fraction < 1.0:
            raise ValueError("min_area_fraction must be in [0, 1), received "
                             f"{self.min_area_fraction}")
        if not 0.0 <= self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in [0, 1], received {self.keep_fraction}")

    def params(self) -> dict[str, Any]:
        """The rule's parameters."""
        return {"mask_threshold": float(self.mask_threshold),
                "min_area_fraction": float(self.min_area_fraction),
                "keep_fraction": float(self.keep_fraction)}

    def apply(self, prob: np.ndarray, maps: np.ndarray, sizes: Sequence[tuple[int, int]],
              threshold: float) -> StudyPrediction:
        """Final per-slice results of one study whose slices are given in slice order."""
        prob, maps = np.asarray(prob, dtype=np.float64).ravel(), np.asarray(maps)
        _check_inputs(prob, maps, sizes)
        volume = maps >= self.mask_threshold
        kept, found, dropped = keep_components(volume, self.keep_fraction)
        kept, emptied = drop_small(kept, prob, threshold, self.min_area_fraction)
        masks = [to_native(maps[i], kept[i], int(h), int(w), self.mask_threshold)
                 for i, (h, w) in enumerate(sizes)]
        label = np.asarray([int(m.any()) for m in masks], dtype=int)
        summary = {"postprocess_rule": self.name, "components_found": found,
                   "components_dropped": dropped, "small_masks_dropped": emptied}
        return StudyPrediction(prob, label, masks, [mask_geometry(m) for m in masks], summary,
                               score=tumor_score(prob, maps))

    def __call__(self, raw: RawPrediction, study: Study, threshold: float) -> StudyPrediction:
        """The study's final per-slice results (its slices in slice order)."""
        order = np.argsort(np.asarray(study.slice_index), kind="stable")
        if np.array_equal(order, np.arange(order.size)):
            return self.apply(raw.prob, raw.maps, study.sizes, threshold)
        sizes = study.sizes
        pred = self.apply(np.asarray(raw.prob)[order], np.asarray(raw.maps)[order],
                          [sizes[i] for i in order], threshold)
        back = np.argsort(order)
        return StudyPrediction(pred.prob[back], pred.label[back],
                               [pred.masks[i] for i in back], [pred.geometry[i] for i in back],
                               pred.summary, score=pred.score[back])


def postprocess_groups(rule: ArrayRule, prob: np.ndarray, maps: np.ndarray,
                       sizes: Sequence[tuple[int, int]], patient_ids: Sequence[Any],
                       slice_index: Sequence[int], threshold: float,
                       ) -> tuple[np.ndarray, list[np.ndarray], dict[str, dict[str, Any]]]:
    """Apply a rule to every patient's slices in slice order; labels and masks in input order,
    and each patient's post-processing summary."""
    prob = np.asarray(prob, dtype=np.float64).ravel()
    maps = np.asarray(maps)
    ids = np.asarray([str(x) for x in patient_ids])
    order_key = np.asarray(slice_index, dtype=np.int64).ravel()
    if not (prob.size == len(maps) == len(sizes) == ids.size == order_key.size):
        raise ValueError(f"lengths differ: {prob.size} probabilities, {len(maps)} maps, "
                         f"{len(sizes)} sizes, {ids.size} patient ids, {order_key.size} "
                         "slice numbers")
    label = np.zeros(prob.size, dtype=int)
    masks: list[np.ndarray | None] = [None] * prob.size
    summaries: dict[str, dict[str, Any]] = {}
    for pid in dict.fromkeys(ids):
        rows = np.flatnonzero(ids == pid)
        rows = rows[np.argsort(order_key[rows], kind="stable")]
        pred = rule.apply(prob[rows], maps[rows], [sizes[i] for i in rows], threshold)
        label[rows] = pred.label
        for j, i in enumerate(rows):
            masks[i] = pred.masks[j]
        summaries[str(pid)] = pred.summary
    return label, [m for m in masks if m is not None], summaries


def rule_from_record(postprocess_record: dict[str, Any] | None,
                     mask_threshold: float) -> WholeStudy | SliceThreshold:
    """The rule a ``model.json`` ``postprocess`` field names (None: the slice rule)."""
    if not postprocess_record:
        return SliceThreshold(mask_threshold)
    rule = postprocess_record.get("rule")
    if rule != WholeStudy.name:
        raise ValueError(f"unknown post-processing rule in model.json, received {rule!r}")
    params = postprocess_record.get("params") or {}
    known = {"mask_threshold", "min_area_fraction", "keep_fraction"}
    return WholeStudy(**{k: float(v) for k, v in params.items() if k in known})


def post_processor(record: dict[str, Any], settings: Settings) -> WholeStudy | SliceThreshold:
    """The post-processing a model version was evaluated with (its ``model.json``)."""
    return rule_from_record(record.get("postprocess"), settings.mask_threshold)
