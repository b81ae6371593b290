"""The input pipeline without storage: building arrays, class weights, augmentation and the
Keras PyDataset."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brain_tumor.ingest.imaging import decode_image, encode_tiff
from brain_tumor.ml.inputs import (
    ArrayDataset,
    SliceSequence,
    augment_batch,
    build_arrays,
    class_weights,
)

REPO = Path(__file__).resolve().parents[2]


def _tiny_manifest(patients: list[str]) -> tuple[pd.DataFrame, dict[str, bytes]]:
    rng = np.random.default_rng(0)
    rows, blobs = [], {}
    for p in patients:
        for s in (2, 1):  # stored out of order: build_arrays sorts
            image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            mask = np.zeros((8, 8), np.uint8)
            mask[2:4, 2:5] = 255 * (s == 1)
            blobs[f"{p}/{s}.tif"] = encode_tiff(image)
            blobs[f"{p}/{s}_mask.tif"] = encode_tiff(mask)
            rows.append({"patient_id": p, "slice_index": s, "image_key": f"{p}/{s}.tif",
                         "mask_key": f"{p}/{s}_mask.tif", "label": int(s == 1)})
    return pd.DataFrame(rows), blobs


def test_build_arrays_sorts_binarizes_and_names_unsplit_patients():
    manifest, blobs = _tiny_manifest(["B", "A"])
    split = pd.DataFrame({"patient_id": ["A", "B"], "split": ["train", "test"]})
    data = build_arrays(manifest, split, blobs.__getitem__, image_size=8, workers=2)
    assert list(data.patient_ids) == ["A", "A", "B", "B"] and list(data.slice_index) == [1, 2, 1, 2]
    assert list(data.splits) == ["train", "train", "test", "test"]
    assert data.masks.max() == 1 and data.masks[0].sum() == 6 and data.masks[1].sum() == 0
    np.testing.assert_array_equal(data.images[0], decode_image(blobs["A/1.tif"]))
    with pytest.raises(ValueError, match=r"not in the split: \['B'\]"):
        build_arrays(manifest, split[split.patient_id == "A"], blobs.__getitem__, image_size=8)


def test_class_weights_are_balanced():
    w = class_weights(np.array([0, 0, 0, 1], np.int8))
    assert w == pytest.approx({0: 4 / 6, 1: 2.0})
    assert class_weights(np.array([1, 0])) == {0: 1.0, 1: 1.0}
    with pytest.raises(ValueError, match=r"both classes, received counts \{0: 3, 1: 0\}"):
        class_weights(np.zeros(3, np.int8))
    with pytest.raises(ValueError, match=r"received values \[2\]"):
        class_weights(np.array([0, 1, 2]))


def _blob_batch(n: int = 8, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):  # one bright square, off-centre, exactly where the mask is 1
        y, x = 2 + i % 5, size - 10 - i % 5
        images[i, y:y + 7, x:x + 7] = 255
        masks[i, y:y + 7, x:x + 7] = 1
    return images, masks


def test_augment_keeps_types_and_moves_image_and_mask_together():
    images, masks = _blob_batch()
    out, out_masks = augment_batch(images, masks, np.random.default_rng(3))
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert out_masks is not None and out_masks.dtype == np.uint8 and out_masks.shape == masks.shape
    assert set(np.unique(out_masks)) <= {0, 1}
    assert not np.array_equal(out, images)
    for seed in range(20):
        out, out_masks = augment_batch(images, masks, np.random.default_rng(seed))
        for img, m in zip(out, out_masks, strict=True):
            bright = img[..., 0] > 128
            inter = (bright & (m == 1)).sum()
            assert inter / (bright | (m == 1)).sum() > 0.6, seed
            cy, cx = np.argwhere(bright).mean(0)
            my, mx = np.argwhere(m == 1).mean(0)
            assert abs(cy - my) < 1 and abs(cx - mx) < 1, seed


def test_augment_is_deterministic_by_seed_and_handles_no_masks():
    images, masks = _blob_batch()
    a = augment_batch(images, masks, np.random.default_rng(7))
    b = augment_batch(images, masks, np.random.default_rng(7))
    c = augment_batch(images, masks, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    only, none = augment_batch(images, None, np.random.default_rng(7))
    assert none is None
    np.testing.assert_array_equal(only, a[0])  # same draws whether or not masks come along
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(images.astype(np.float32), None, np.random.default_rng(0))


def test_slice_sequence_for_the_classifier():
    images, masks = _blob_batch(10, 16)
    labels = np.array([0, 1] * 5, np.int8)
    seq = SliceSequence(images, labels, 4)
    assert len(seq) == 3
    shapes = [(x.shape, y.shape) for x, y in (seq[i] for i in range(len(seq)))]
    assert shapes == [((4, 16, 16, 3), (4, 1))] * 2 + [((2, 16, 16, 3), (2, 1))]
    x, y = seq[0]
    assert x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_array_equal(x, images[:4].astype(np.float32))  # raw 0..255, no augmentation
    np.testing.assert_array_equal(y[:, 0], labels[:4])
    weighted = SliceSequence(images, labels, 4, sample_weights={0: 0.5, 1: 2.0})
    x, y, w = weighted[2]
    assert w.dtype == np.float32 and list(w) == [0.5, 2.0]
    with pytest.raises(ValueError, match=r"classes without weight \[1\]"):
        SliceSequence(images, labels, 4, sample_weights={0: 1.0})
    with pytest.raises(IndexError):
        seq[3]


def test_slice_sequence_shuffles_and_augments_deterministically():
    images, masks = _blob_batch(10, 16)
    labels = np.arange(10)
    a = SliceSequence(images, labels, 5, shuffle=True, augment=True, seed=4)
    b = SliceSequence(images, labels, 5, shuffle=True, augment=True, seed=4)
    first = np.concatenate([a[i][1][:, 0] for i in range(2)])
    assert sorted(first) == list(range(10)) and list(first) != list(range(10))
    for i in range(2):
        np.testing.assert_array_equal(a[i][0], b[i][0])
    a.on_epoch_end()
    second = np.concatenate([a[i][1][:, 0] for i in range(2)])
    assert list(second) != list(first) and sorted(second) == list(range(10))


def test_slice_sequence_for_the_segmenter():
    images, masks = _blob_batch(6, 16)
    seq = SliceSequence(images, masks, 4, masks_are_targets=True, augment=True, seed=1,
                        sample_weights={0: 1.0, 1: 3.0}, labels=np.array([0, 1, 1, 0, 1, 1]))
    x, y, w = seq[0]
    assert x.shape == (4, 16, 16, 3) and y.shape == (4, 16, 16, 1) and y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, 1.0} and list(w) == [1.0, 3.0, 3.0, 1.0]
    assert not np.array_equal(x, images[:4].astype(np.float32))
    for img, m in zip(x, y[..., 0], strict=True):  # the mask followed its image
        bright = img[..., 0] > 128
        assert (bright & (m == 1)).sum() / (bright | (m == 1)).sum() > 0.6
    plain = SliceSequence(images, masks, 4, masks_are_targets=True)
    np.testing.assert_array_equal(plain[1][1][..., 0], masks[4:].astype(np.float32))
    with pytest.raises(ValueError, match="need the slice labels"):
        SliceSequence(images, masks, 4, masks_are_targets=True, sample_weights={0: 1.0, 1: 1.0})


def test_array_dataset_len_and_empty_subset():
    data = ArrayDataset(
        images=np.zeros((2, 4, 4, 3), np.uint8), masks=np.zeros((2, 4, 4), np.uint8),
        labels=np.array([0, 1], np.int8), patient_ids=np.array(["a", "b"]),
        slice_index=np.array([1, 1]), splits=np.array(["train", "train"]),
        mask_keys=np.array(["m1", "m2"]), image_keys=np.array(["i1", "i2"]))
    assert len(data) == 2 and len(data.subset("train")) == 2 and len(data.subset("test")) == 0
