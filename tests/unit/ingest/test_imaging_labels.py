import numpy as np
import pytest

from brain_tumor.ingest.imaging import (
    SliceError,
    decode_image,
    decode_mask,
    encode_tiff,
    resize_slice,
)
from brain_tumor.ingest.labels import bounding_box, relabel


def test_channel_order_round_trip():
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 200, 30  # pre, FLAIR, post
    out = decode_image(encode_tiff(img))
    np.testing.assert_array_equal(out, img)
    assert out[0, 0, 1] == 200


@pytest.mark.parametrize("data, reason", [
    (b"", "unreadable"), (b"garbage" * 10, "unreadable"),
    (encode_tiff(np.zeros((8, 8, 3), np.uint16)), "not_uint8"),
    (encode_tiff(np.zeros((8, 8), np.uint8)), "channels"),
    (encode_tiff(np.zeros((8, 8, 4), np.uint8)), "channels"),
])
def test_bad_images(data, reason):
    with pytest.raises(SliceError) as err:
        decode_image(data)
    assert err.value.reason == reason


def test_truncated_tiff_is_unreadable():
    data = encode_tiff(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    with pytest.raises(SliceError, match="unreadable"):
        decode_image(data[: len(data) // 2])


def test_mask_decoding():
    mask = np.zeros((6, 6), np.uint8)
    np.testing.assert_array_equal(decode_mask(encode_tiff(mask)), mask)
    with pytest.raises(SliceError, match="channels"):
        decode_mask(encode_tiff(np.zeros((6, 6, 3), np.uint8)))


@pytest.mark.parametrize("high", [255, 1])
def test_relabel_any_pixel_is_tumor(high):
    mask = np.zeros((10, 12), np.uint8)
    assert relabel(mask).label == 0 and relabel(mask).bbox is None
    mask[3, 4] = high
    lab = relabel(mask)
    assert (lab.label, lab.tumor_pixels, lab.bbox) == (1, 1, (3, 4, 3, 4))


def test_nonbinary_mask_is_rejected():
    mask = np.array([[0, 128], [255, 0]], np.uint8)
    with pytest.raises(SliceError, match=r"mask values \[0, 128, 255\]") as err:
        relabel(mask)
    assert err.value.reason == "mask_values"
    with pytest.raises(SliceError):
        relabel(np.array([[0, 1], [255, 0]], np.uint8))  # mixed conventions


def test_bounding_box_inclusive():
    m = np.zeros((10, 10), bool)
    m[2:5, 6:9] = True
    assert bounding_box(m) == (2, 6, 4, 8)


def test_resize():
    img = np.zeros((32, 32, 3), np.uint8)
    assert resize_slice(img, 16).shape == (16, 16, 3)
    assert resize_slice(img, 32) is img
