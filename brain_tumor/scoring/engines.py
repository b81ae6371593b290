"""Inference engines: a loaded model version that predicts native-size slices (second seam).

``KerasEngine`` runs the stored ``.keras`` classifier and segmenter with Keras 3 (any backend).
Resizing to the model's input size happens here, so every engine sees the same input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from brain_tumor.ml.predict import LoadedModel, load_model_version, predict_batch, to_model_input
from brain_tumor.scoring.contracts import RawPrediction
from brain_tumor.settings import Settings
from brain_tumor.store.storage import ObjectStore


class KerasEngine:
    """Both Keras models of a model version, predicting in batches."""

    def __init__(self, model: LoadedModel, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, received {batch_size}")
        self.model = model
        self.batch_size = batch_size

    @property
    def version(self) -> str:
        """The model version id."""
        return self.model.version

    @property
    def record(self) -> dict[str, Any]:
        """The model version's model.json."""
        return self.model.record

    @property
    def threshold(self) -> float:
        """The decision threshold chosen on the model's validation patients."""
        return self.model.threshold

    def predict(self, images: list[np.ndarray]) -> RawPrediction:
        """Probabilities and probability maps (model size) of native-size uint8 slices."""
        x = to_model_input(images, self.model.image_size)
        prob, maps = predict_batch(self.model, x, self.batch_size)
        return RawPrediction(prob, maps)


def load_keras_engine(store: ObjectStore, settings: Settings, version: str) -> KerasEngine:
    """Fetch a model version (cached locally) and wrap it as an engine."""
    return KerasEngine(load_model_version(store, settings, version), settings.batch_size)


def inference_engine(model: LoadedModel, settings: Settings) -> KerasEngine:
    """The engine that runs a loaded model version for scoring."""
    return KerasEngine(model, settings.batch_size)
