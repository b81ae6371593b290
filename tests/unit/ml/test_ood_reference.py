"""The training-time out-of-distribution reference: fitted on train slices, bounded on validation
slices, and blind to test slices."""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
import pytest

from brain_tumor.devtools.synth import make_slice
from brain_tumor.ingest.imaging import resize_slice
from brain_tumor.ml.inputs import ArrayDataset
from brain_tumor.ml.models.classifier import build_classifier
from brain_tumor.ml.normalize import VOLUME_PERCENTILE, normalize_by_study
from brain_tumor.ml.ood_reference import (
    fit_training_reference,
    sample_rows,
    slice_features,
    write_reference,
)
from brain_tumor.scoring import ood
from brain_tumor.settings import load_settings

SIZE = 32
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _dataset(splits: list[str], seed: int = 0) -> ArrayDataset:
    """Synthetic slices (one per split entry), resized to SIZE, half with a lesion."""
    rng = np.random.default_rng(seed)
    images = np.stack([resize_slice(make_slice(rng, 48, (0.5, 0.5, 0.1) if i % 2 else None)[0],
                                    SIZE) for i in range(len(splits))])
    n = len(splits)
    return ArrayDataset(images=images, masks=np.zeros((n, SIZE, SIZE), np.uint8),
                        labels=(np.arange(n) % 2).astype(np.int8),
                        patient_ids=np.array([f"p{i // 4}" for i in range(n)]),
                        slice_index=np.arange(n, dtype=np.int64), splits=np.array(splits),
                        mask_keys=np.array([""] * n), image_keys=np.array([""] * n))


@pytest.fixture(scope="module")
def classifier() -> keras.Model:
    keras.utils.set_random_seed(2)
    return build_classifier(SIZE, backbone="tiny", dense_units=8)


SETTINGS = load_settings(env={}, ood_max_train_slices=30, batch_size=8)


def test_sample_rows_caps_and_repeats() -> None:
    assert sample_rows(5, 10, 1).tolist() == [0, 1, 2, 3, 4]
    rows = sample_rows(100, 30, 1)
    assert len(rows) == len(set(rows.tolist())) == 30 and (np.diff(rows) > 0).all()
    assert rows.tolist() == sample_rows(100, 30, 1).tolist()


def test_bounds_come_from_validation_slices_and_test_slices_never_count(classifier, tmp_path):
    data = _dataset(["train"] * 40 + ["val"] * 12 + ["test"] * 8)
    val = data.splits == "val"
    val_prob = np.linspace(0.0, 1.0, int(val.sum()))

    reference = fit_training_reference(data, classifier, val_prob, SETTINGS)

    # each bound is the (1 - slice_rate) quantile of the validation slices' distances
    val_values = {"input": ood.input_statistics(data.images[val]),
                  "features": slice_features(classifier, data.images[val], 8)}
    for det in reference.detectors:
        dist = det.distance(val_values[det.name])
        assert det.bound == pytest.approx(np.quantile(dist, 1 - SETTINGS.ood_slice_rate))
    assert reference.facts == {"train_slices": 30, "validation_slices": 12,
                               "train_studies": 10, "validation_studies": 3}
    # the study detector: every training slice (not the sample), one point per patient
    train = data.splits == "train"
    summaries = ood.study_summaries(ood.input_statistics(data.images[train]),
                                    data.patient_ids[train])
    assert reference.study is not None and reference.study_rate == SETTINGS.ood_study_rate
    assert np.allclose(reference.study.mean, summaries.mean(axis=0))
    assert len(reference.validation["study_distance"]) == 10 + 3
    assert np.allclose(reference.validation["probability"], val_prob)

    # test slices turned into noise (and more of them): the reference does not move
    noisy = data.images.copy()
    test = data.splits == "test"
    noisy[test] = np.random.default_rng(9).integers(0, 256, noisy[test].shape, dtype=np.uint8)
    changed = replace(data, images=noisy)
    again = fit_training_reference(changed, classifier, val_prob, SETTINGS)
    assert again.to_bytes() == reference.to_bytes()

    # the validation slices do move it: the bounds follow them
    moved = data.images.copy()
    moved[val] = 255 - moved[val]
    shifted = replace(data, images=moved)
    other = fit_training_reference(shifted, classifier, val_prob, SETTINGS)
    assert other.detector("input").bound != pytest.approx(reference.detector("input").bound)

    entry = write_reference(reference, tmp_path)
    assert (tmp_path / "ood.npz").read_bytes() == reference.to_bytes()
    assert entry["bounds"].keys() == {"input", "features", "study", "geometry"}
    assert entry["bounds"]["geometry"] == pytest.approx(reference.geometry.bound, abs=1e-6)
    assert (entry["train_slices"], entry["validation_slices"]) == (30, 12)
    assert (entry["train_studies"], entry["validation_studies"]) == (10, 3)
    assert entry["study_rate"] == SETTINGS.ood_study_rate
    assert entry["input_norm"] == SETTINGS.intensity_norm == reference.input_norm


def test_both_detectors_look_at_the_normalized_model_input(classifier) -> None:
    raw = _dataset(["train"] * 24 + ["val"] * 12)
    model_input = replace(raw, images=normalize_by_study(raw.images, raw.patient_ids,
                                                         VOLUME_PERCENTILE))
    settings = SETTINGS.model_copy(update={"intensity_norm": VOLUME_PERCENTILE})
    val_prob = np.linspace(0.0, 1.0, 12)

    reference = fit_training_reference(model_input, classifier, val_prob, settings)

    train = raw.splits == "train"
    det = reference.detector("input")
    assert np.allclose(det.mean, ood.input_statistics(model_input.images[train]).mean(axis=0))
    assert not np.allclose(det.mean, ood.input_statistics(raw.images[train]).mean(axis=0))
    assert reference.input_norm == VOLUME_PERCENTILE and reference.judges_inputs()


def test_mismatched_inputs_are_refused(classifier) -> None:
    data = _dataset(["train"] * 6 + ["val"] * 4)
    with pytest.raises(ValueError, match="one probability per validation slice"):
        fit_training_reference(data, classifier, np.zeros(3), SETTINGS)
