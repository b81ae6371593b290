"""Per-study intensity normalization shared by training inputs and scoring."""

import numpy as np
import pytest

from brain_tumor.ml.inputs import ArrayDataset, normalize_dataset
from brain_tumor.ml.normalize import (
    normalize_by_study,
    normalize_study,
    record_method,
    volume_range,
)


def _study(scale: float, n: int = 4, size: int = 16, seed: int = 0) -> np.ndarray:
    """A study whose brain (a centered square) has intensities 10..100 times scale per channel."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 3), np.uint8)
    q = size // 4
    brain = rng.uniform(10, 100, (n, size - 2 * q, size - 2 * q, 3)) * scale
    images[:, q:size - q, q:size - q] = np.clip(brain, 0, 255).astype(np.uint8)
    return images


def test_volume_percentile_maps_the_brain_range_and_keeps_the_background():
    images = _study(1.0)
    out = normalize_study(images)
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert (out[:, :4] == 0).all() and (out[:, :, 12:] == 0).all()  # background stays 0
    brain = out[:, 4:12, 4:12].reshape(-1, 3)
    for c in range(3):  # 1st..99th percentile -> 0..255: about 1% clipped at each end
        assert 0.005 < np.mean(brain[:, c] == 255) < 0.03
        assert brain[:, c].min() == 0 and 100 < np.median(brain[:, c]) < 155
    ranges = volume_range(images)
    assert ranges.shape == (3, 2) and (ranges[:, 0] >= 10).all() and (ranges[:, 1] <= 100).all()


def test_a_scanner_gain_is_undone_per_study():
    bright, dim = _study(2.0), _study(0.5)
    a, b = normalize_study(bright), normalize_study(dim)
    assert np.abs(bright.astype(int) - dim.astype(int)).mean() > 10
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2  # the same study after scaling


def test_list_input_of_native_sizes_and_none_method():
    slices = [_study(1.0, n=1, size=16)[0], _study(1.0, n=1, size=32, seed=1)[0]]
    out = normalize_study(slices)
    assert isinstance(out, list) and [s.shape for s in out] == [(16, 16, 3), (32, 32, 3)]
    assert normalize_study(slices, "none") is slices
    blank = [np.zeros((8, 8, 3), np.uint8)]
    assert (normalize_study(blank)[0] == 0).all()  # no brain: nothing to scale
    with pytest.raises(ValueError, match="received 'zscore'"):
        normalize_study(slices, "zscore")
    with pytest.raises(ValueError, match=r"slice 0 must be H x W x 3 uint8, received \(8, 8\)"):
        normalize_study([np.zeros((8, 8), np.uint8)])


def test_dataset_normalized_study_by_study_like_scoring_does():
    a, b = _study(2.0, seed=1), _study(0.5, seed=2)
    images = np.concatenate([a, b])
    ids = np.array(["S1"] * 4 + ["S2"] * 4)
    out = normalize_by_study(images, ids)
    np.testing.assert_array_equal(out[:4], normalize_study(a))
    np.testing.assert_array_equal(out[4:], normalize_study(b))
    n = len(images)
    data = ArrayDataset(images=images, masks=np.zeros((n, 16, 16), np.uint8),
                        labels=np.zeros(n, np.int8), patient_ids=ids, slice_index=np.arange(n),
                        splits=np.array(["train"] * n), mask_keys=ids, image_keys=ids)
    np.testing.assert_array_equal(normalize_dataset(data, "volume_percentile").images, out)
    assert normalize_dataset(data, "none") is data
    assert record_method({"intensity_norm": "volume_percentile"}) == "volume_percentile"
    assert record_method({}) == "none"  # model versions trained before the setting existed


def test_scoring_input_is_normalized_after_resizing_as_in_training() -> None:
    from brain_tumor.ml.predict import to_model_input
    from brain_tumor.scoring.engines import study_input

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 180, (40, 40, 3), dtype=np.uint8) for _ in range(4)]
    resized = to_model_input(images, 32)
    assert np.array_equal(study_input(images, 32, "none"), resized)
    expected = normalize_study(resized.astype(np.uint8), "volume_percentile")
    got = study_input(images, 32, "volume_percentile")
    assert got.dtype == np.float32 and np.array_equal(got, expected.astype(np.float32))
    assert got.max() == 255.0 and resized.max() < 180
