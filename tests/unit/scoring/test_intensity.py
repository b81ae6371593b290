"""brain_tumor.scoring.clinical.intensity: the kaggle_3m rule on synthetic 512 x 512 series."""

from __future__ import annotations

import numpy as np
import pytest

from brain_tumor.scoring.clinical.intensity import (
    GridTransform,
    apply_window,
    grid_transform,
    intensity_window,
    map_volume,
    resize_and_crop,
    to_source_grid,
)


def _series(slices: int = 4, size: int = 512, dtype: type = np.uint16) -> np.ndarray:
    """A head-like series: background 0, a ring at 300, brain at 1200, a lesion at 2000."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    radius = np.hypot(yy - size / 2, xx - size / 2) / size
    plane = np.zeros((size, size))
    plane[radius < 0.42] = 300
    plane[radius < 0.36] = 1200
    plane[np.hypot(yy - 0.45 * size, xx - 0.55 * size) < 0.06 * size] = 2000
    plane[np.hypot(yy - 0.6 * size, xx - 0.4 * size) < 0.03 * size] = 5000  # over the maximum
    return np.repeat(plane[None], slices, axis=0).astype(dtype)


def test_window_follows_the_rule_on_a_small_histogram():
    values = np.array([0.0] * 10 + [10.0] * 5 + [50.0] * 20 + [80.0] * 3)
    window = intensity_window(values)
    assert window.minimum == 10.0  # 2nd percentile of the 28 non-zero values
    assert window.peak == 50.0  # fullest bin at or above the minimum
    assert window.maximum == pytest.approx(10.0 + 2.55 * 40.0)
    mapped = apply_window(values, window)
    assert mapped.dtype == np.uint8
    assert mapped[values == 50.0].tolist() == [100] * 20  # the peak lands at 100
    assert mapped[values == 10.0].max() == 0 and mapped[values == 0.0].max() == 0


def test_the_peak_is_searched_from_the_minimum_up():
    # the background bin is by far the fullest, but lies below the minimum
    values = np.array([0.0] * 500 + [1.0] + [400.0] * 30 + [900.0] * 60 + [1500.0] * 8)
    window = intensity_window(values)
    assert window.minimum == pytest.approx(400.0, abs=1e-6)
    assert window.peak == 900.0


def test_a_512_series_maps_its_histogram_peak_to_100():
    series = _series()
    mapped, transform, window = map_volume(series)
    assert mapped.shape == (4, 256, 256) and mapped.dtype == np.uint8
    assert transform == GridTransform((512, 512), (256, 256), (0, 0))
    assert window.peak == 1200.0
    resized = np.maximum(resize_and_crop(series, transform), 0)
    assert window.minimum == np.percentile(resized[resized != 0], 2, method="hazen")
    assert 0 < window.minimum < 300  # the ring, and its edges blurred by the resize
    assert window.maximum == pytest.approx(window.minimum + 2.55 * (1200.0 - window.minimum))
    centre = mapped[:, 128, 100]  # brain tissue, away from edges and the lesion
    assert centre.tolist() == [100] * 4
    lesion = mapped[:, int(0.45 * 256), int(0.55 * 256)]
    expected = round(255 * (2000 - window.minimum) / (window.maximum - window.minimum))
    assert lesion.tolist() == [expected] * 4
    assert mapped[:, 0, 0].tolist() == [0] * 4  # background
    assert mapped[:, int(0.6 * 256), int(0.4 * 256)].tolist() == [255] * 4  # clipped


def test_16_bit_values_use_the_whole_byte_range():
    series = (_series().astype(np.uint32) * 12).astype(np.uint16)  # 12-bit range and over
    assert series.dtype == np.uint16 and series.max() == 60000
    mapped, _, window = map_volume(series)
    assert window.peak == 1200.0 * 12
    assert mapped.max() == 255 and mapped.min() == 0
    assert mapped[0, 128, 100] == 100
    # the rule is scale-free: the same series in other units maps to the same slices
    unscaled, _, _ = map_volume(_series())
    assert np.abs(mapped.astype(int) - unscaled).max() <= 1


def test_negative_values_are_clipped_before_the_window():
    series = _series(dtype=np.float32)
    noisy = series.copy()
    noisy[:, :40, :40] = -500.0  # background below zero (e.g. a scanner offset)
    mapped, _, window = map_volume(noisy)
    clean, _, clean_window = map_volume(series)
    assert window == clean_window
    assert np.array_equal(mapped, clean)


def test_grid_transform_resizes_the_smaller_side_to_256_and_crops_like_the_source():
    assert grid_transform((512, 640)) == GridTransform((512, 640), (256, 320), (0, 31))
    assert grid_transform((300, 500)) == GridTransform((300, 500), (256, 427), (0, 84))
    assert grid_transform((256, 256)) == GridTransform((256, 256), (256, 256), (0, 0))
    assert grid_transform((200, 300)).resized_shape == (256, 384)
    with pytest.raises(ValueError, match="received"):
        grid_transform((0, 12))


def test_a_mask_round_trips_through_crop_and_scale():
    mask = np.zeros((1, 512, 640), np.uint8)
    mask[0, 200:260, 300:380] = 1
    transform = grid_transform((512, 640))
    small = resize_and_crop(mask, transform, nearest=True)[0]
    assert small.shape == (256, 256)
    assert small.sum() == 30 * 40  # half size each way
    back = to_source_grid(small, transform)
    assert back.shape == (512, 640) and back.dtype == bool
    assert np.array_equal(back, mask[0] != 0)


def test_a_predicted_mask_lands_on_the_source_pixels_it_covers():
    transform = grid_transform((512, 512))
    predicted = np.zeros((256, 256), bool)
    predicted[100:110, 50:60] = True
    back = to_source_grid(predicted, transform)
    rows, cols = np.nonzero(back)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (200, 219, 100, 119)
    assert transform.scale == (0.5, 0.5)
    assert GridTransform.from_dict(transform.to_dict()) == transform
    with pytest.raises(ValueError, match="received shape"):
        to_source_grid(np.zeros((32, 32), bool), transform)


def test_a_volume_without_a_usable_window_is_refused():
    with pytest.raises(ValueError, match="all-zero"):
        map_volume(np.zeros((2, 300, 300), np.uint16))
    with pytest.raises(ValueError, match="received"):
        intensity_window(np.array([0.0, 0.2, 0.5, 0.9]))  # a 0..1 float volume: one bin
