"""The out-of-distribution reference of a model version, fitted when it is trained.

Training slices (at most ``ood_max_train_slices``, sampled with ``train_seed``) give each slice
detector its centre and spread; the validation slices give its bound (``ood_slice_rate``) and
the drift references. The study detector is fitted on every training slice's input statistics,
one point per patient, and bounded (``ood_study_rate``) on the training patients' out-of-fold
distances (folds dealt with ``train_seed``) and the validation patients'; the geometry
criterion (head position, orientation and extent, ``ood.GeometryCheck``) is bounded the same way
and shares ``ood_study_rate`` with it. Test slices never reach the fit: the rows are picked by
split here.

Both detectors look at the model's actual input, the resized slices mapped per study with the
model version's ``intensity_norm``: input statistics (``ood.input_statistics``, what scoring
computes on ``engines.study_input``) and the classifier's pooled features
(``brain_tumor.ml.export.classifier_with_features``, what the engines return). The reference
states the mapping (``input_norm``). The reference is written as ``ood.npz`` beside the models;
model.json's ``ood`` entry states its settings, mapping, bounds and slice counts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brain_tumor.scoring import ood
from brain_tumor.settings import Settings
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.storage import ObjectStore

if TYPE_CHECKING:
    from brain_tumor.ml.inputs import ArrayDataset

log = logging.getLogger(__name__)

#: the reference's file in a model version's folder
OOD_FILE = "ood.npz"


def sample_rows(count: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``limit`` of ``count`` rows, drawn without replacement."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def slice_features(classifier: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """N x F pooled classifier features of a model-input batch."""
    from brain_tumor.ml.export import classifier_with_features

    _, features = classifier_with_features(classifier).predict(
        np.asarray(x, np.float32), batch_size=batch_size, verbose=0)
    return np.asarray(features, np.float64)


def fit_training_reference(model_input: ArrayDataset, classifier: Any, val_prob: np.ndarray,
                           settings: Settings) -> ood.Reference:
    """Fit the reference on the train split's slices and bound it on the val split's.

    ``model_input`` holds the slices as the classifier takes them (resized, normalized per
    study with ``settings.intensity_norm``); both detectors describe that input. ``val_prob``:
    the classifier's validation probabilities.
    """
    train_all = np.flatnonzero(model_input.splits == "train")
    val_rows = np.flatnonzero(model_input.splits == "val")
    train_rows = train_all[sample_rows(len(train_all), settings.ood_max_train_slices,
                                       settings.train_seed)]
    if len(val_prob) != len(val_rows):
        raise ValueError(f"val_prob must hold one probability per validation slice "
                         f"({len(val_rows)}), received {len(val_prob)}")
    # statistics of every training slice (the study detector); the slice detector's are a sample
    train_stats = ood.input_statistics(model_input.images[train_all])
    train = {"input": train_stats[np.searchsorted(train_all, train_rows)],
             "features": slice_features(classifier, model_input.images[train_rows],
                                        settings.batch_size)}
    validation = {"input": ood.input_statistics(model_input.images[val_rows]),
                  "features": slice_features(classifier, model_input.images[val_rows],
                                             settings.batch_size)}
    reference = ood.fit_reference(train, validation, slice_rate=settings.ood_slice_rate,
                                  study_share=settings.ood_study_share,
                                  validation_prob=np.asarray(val_prob).reshape(-1),
                                  input_norm=settings.intensity_norm,
                                  study_rate=settings.ood_study_rate,
                                  train_patients=model_input.patient_ids[train_all],
                                  validation_patients=model_input.patient_ids[val_rows],
                                  study_train=train_stats, seed=settings.train_seed)
    log.info("out-of-distribution reference: %d train / %d validation slices, bounds %s",
             len(train_rows), len(val_rows), reference_bounds(reference))
    return reference


def reference_bounds(reference: ood.Reference) -> dict[str, float]:
    """Each detector's bound, by name (the study detector's as "study")."""
    study = [] if reference.study is None else [reference.study]
    bounds = {d.name: round(float(d.bound), 6) for d in [*reference.detectors, *study]}
    if reference.geometry is not None:
        bounds["geometry"] = round(float(reference.geometry.bound), 6)
    return bounds


def write_reference(reference: ood.Reference, folder: Path) -> dict[str, Any]:
    """Write ``ood.npz`` into folder; returns model.json's ``ood`` entry."""
    (folder / OOD_FILE).write_bytes(reference.to_bytes())
    return {"slice_rate": reference.slice_rate, "study_share": reference.study_share,
            "input_norm": reference.input_norm,
            "bounds": reference_bounds(reference),
            "train_slices": int(reference.facts.get("train_slices", 0)),
            "validation_slices": int(reference.facts.get("validation_slices", 0)),
            "study_rate": reference.study_rate,
            "train_studies": int(reference.facts.get("train_studies", 0)),
            "validation_studies": int(reference.facts.get("validation_studies", 0))}


def load_reference(store: ObjectStore, settings: Settings,
                   record: dict[str, Any]) -> ood.Reference | None:
    """The model version's reference (model.json ``record``); None for a version without one,
    or (logged) one whose model.json names a reference this store does not hold."""
    if not record.get("ood"):
        return None
    key = ModelStore(store, settings).key(str(record["model_version"]), OOD_FILE)
    if not store.exists(key):
        log.warning("model version %s: model.json states an out-of-distribution reference but "
                    "%s does not exist; studies are scored without the check",
                    record["model_version"], key)
        return None
    return ood.Reference.from_bytes(store.get(key))
