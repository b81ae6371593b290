"""Neighbouring slices as segmenter input (2.5D): one definition, per study, ends clamped."""

import numpy as np
import pytest

from brain_tumor.ml.context import (
    grouped_context,
    record_context,
    segmenter_channels,
    with_context,
)


def _study(n: int, size: int = 4) -> np.ndarray:
    """Slice i has value 10*i + c in channel c (c = 0, 1, 2): each slice and channel readable."""
    x = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        for c in range(3):
            x[i, ..., c] = 10 * i + c
    return x


def test_each_slice_gets_the_flair_of_its_neighbours_in_order_and_the_ends_repeat():
    x = _study(4)
    out = with_context(x, 1)
    assert out.shape == (4, 4, 4, 5) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., :3], x)
    # FLAIR (channel 1) of slice i is 10*i + 1: before, then after; the ends repeat themselves
    assert out[:, 0, 0, 3].tolist() == [1, 1, 11, 21]
    assert out[:, 0, 0, 4].tolist() == [11, 21, 31, 31]
    two = with_context(x, 2)
    assert two.shape[-1] == segmenter_channels(2) == 7
    assert two[1, 0, 0, 3:].tolist() == [1, 1, 21, 31]  # i-2 clamped, i-1, i+1, i+2
    assert with_context(x, 0) is x


def test_studies_side_by_side_never_borrow_each_others_slices():
    a, b = _study(3), _study(2) + 100
    ids = np.array(["a"] * 3 + ["b"] * 2)
    out = grouped_context(np.concatenate([a, b]), ids, 1)
    np.testing.assert_array_equal(out[:3], with_context(a, 1))
    np.testing.assert_array_equal(out[3:], with_context(b, 1))
    assert out[3, 0, 0, 3] == 101  # b's first slice repeats itself, not a's last (21)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="context must be an int within 0..3, received 4"):
        with_context(_study(2), 4)
    with pytest.raises(ValueError, match=r"n x S x S x 3, received shape \(2, 4, 4, 5\)"):
        with_context(with_context(_study(2), 1), 1)
    with pytest.raises(ValueError, match="3 study ids for 4 slices"):
        grouped_context(_study(4), np.array(["a", "a", "b"]), 1)
    with pytest.raises(ValueError, match="must be contiguous"):
        grouped_context(_study(3), np.array(["a", "b", "a"]), 1)


def test_model_versions_without_the_field_read_no_context():
    assert record_context({}) == 0 and record_context({"seg_context": 2}) == 2
    with pytest.raises(ValueError, match="received -1"):
        record_context({"seg_context": -1})
