"""Post-processing: raw predictions of a whole study to labels and native-size masks (third seam).

``SliceThreshold`` is the rule the models were evaluated with (``brain_tumor.ml.predict.
postprocess``): a slice is tumor when its probability reaches the model's threshold; its mask is
the segmenter's map resized to the slice and cut at ``mask_threshold``, and empty where the label
is 0, so label, mask and box never disagree.
"""

from __future__ import annotations

from typing import Any

from brain_tumor.ml.predict import postprocess
from brain_tumor.scoring.contracts import RawPrediction, Study, StudyPrediction
from brain_tumor.scoring.geometry import mask_geometry
from brain_tumor.settings import Settings


class SliceThreshold:
    """Each slice on its own: the classifier decides, the segmenter draws."""

    def __init__(self, mask_threshold: float = 0.5, gate_masks: bool = True) -> None:
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), received {mask_threshold}")
        self.mask_threshold = mask_threshold
        self.gate_masks = gate_masks

    def __call__(self, raw: RawPrediction, study: Study, threshold: float) -> StudyPrediction:
        """Labels from the threshold, masks from the maps at each slice's native size."""
        label, masks = postprocess(raw.prob, raw.maps, study.sizes, threshold,
                                   self.mask_threshold, self.gate_masks)
        return StudyPrediction(raw.prob, label, masks, [mask_geometry(m) for m in masks])


def post_processor(record: dict[str, Any], settings: Settings) -> SliceThreshold:
    """The post-processing a model version was evaluated with (its ``model.json``)."""
    return SliceThreshold(settings.mask_threshold)
