"""The four seams a study flows through when it is scored, and what passes between them.

    reader  ->  engine  ->  post-processing  ->  writers
    Study       RawPrediction  StudyPrediction   output objects

Each seam is a small protocol; ``brain_tumor.scoring.pipeline`` puts one implementation of each
together. A new study format, inference engine, post-processing rule or output is a new class
here beside the others, not an edit of ``brain_tumor.scoring.study``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from brain_tumor.store.scores import ScoreStore


class StudyRejected(ValueError):
    """A study that cannot be scored; ``reason`` is a short code, ``files`` the offending keys."""

    def __init__(self, reason: str, detail: str, files: list[str] | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.files = list(files or [])


@dataclass
class Study:
    """One study, read and checked: what the model takes, and where each slice came from."""

    study_id: str
    images: list[np.ndarray]  # native-size H x W x 3 uint8, channels (pre-contrast, FLAIR, post)
    slice_index: list[int]  # the slice number of each image, ascending
    source: list[str]  # the object each slice was read from
    meta: dict[str, Any] = field(default_factory=dict)  # reader-specific facts (format, geometry)
    summary: dict[str, Any] = field(default_factory=dict)  # reader facts for summary.json

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """(height, width) of each slice."""
        return [(int(img.shape[0]), int(img.shape[1])) for img in self.images]


@dataclass
class RawPrediction:
    """What an engine returns for N slices, at the model's input size."""

    prob: np.ndarray  # N tumor probabilities
    maps: np.ndarray  # N x S x S tumor probability maps
    features: np.ndarray | None = None  # N x F pooled classifier features (None: not given)


@dataclass
class StudyPrediction:
    """Final per-slice results at each slice's native size."""

    prob: np.ndarray  # N float
    label: np.ndarray  # N int: 1 = tumor
    masks: list[np.ndarray]  # N boolean masks
    geometry: list[dict[str, Any]]  # N of {area, bbox, centroid}
    summary: dict[str, Any] = field(default_factory=dict)  # post-processing facts for summary.json
    ood_score: np.ndarray | None = None  # N out-of-distribution slice scores (None: unchecked)
    score: np.ndarray | None = None  # N tumor scores (``postprocess.tumor_score``), for ranking


class StudyReader(Protocol):
    """Turns a stored study into a ``Study``; raises ``StudyRejected`` for an unusable one."""

    def read(self, study_id: str) -> Study:
        """Read and check every slice of one study."""
        ...


class InferenceEngine(Protocol):
    """A loaded model version that predicts native-size uint8 slices."""

    version: str
    record: dict[str, Any]

    @property
    def threshold(self) -> float:
        """The decision threshold chosen on the model's validation patients."""
        ...

    def predict(self, images: list[np.ndarray]) -> RawPrediction:
        """Probabilities and probability maps of every slice."""
        ...


class PostProcessor(Protocol):
    """Whole-study rules from raw predictions to labels and native-size masks."""

    def __call__(self, raw: RawPrediction, study: Study, threshold: float) -> StudyPrediction:
        """The study's final per-slice results."""
        ...


class OutputWriter(Protocol):
    """Writes some of a scored study's outputs; returns the names it wrote."""

    def write(self, scores: ScoreStore, model_version: str, study: Study,
              pred: StudyPrediction) -> list[str]:
        """Write this writer's outputs of one study (before its done marker)."""
        ...
