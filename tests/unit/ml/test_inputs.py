"""The input pipeline: arrays from a dataset version on S3 (moto), the local cache, augmentation
and the Keras PyDataset, under the TensorFlow and JAX backends."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from brain_tumor import steps
from brain_tumor.devtools.synth import SynthSpec, make_export
from brain_tumor.ingest.exports import upload_export
from brain_tumor.ingest.imaging import decode_image, decode_mask, encode_tiff, resize_slice
from brain_tumor.ingest.run import ingest_export
from brain_tumor.ml.inputs import (
    ArrayDataset,
    SliceSequence,
    augment_batch,
    build_arrays,
    cache_path,
    class_weights,
    fetch_native_masks,
    load_arrays,
)
from brain_tumor.store.datasets import DatasetStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def version(tmp_path, settings, store) -> str:
    """A split dataset version of 5 patients x 4 slices of 32x32."""
    root = tmp_path / "e1"
    make_export(root, SynthSpec(patients=5, slices=4, size=32))
    upload_export(store, settings, root)
    v = ingest_export(store, settings, "e1").dataset_version
    steps.split(settings, v)
    return v


def _count_slice_reads(monkeypatch, store, settings, fail: bool = False) -> list[str]:
    """Record (or refuse) reads of slice/mask blobs; other reads (manifest, split) go through."""
    reads: list[str] = []
    original = store.get
    blobs = settings.key("blobs")

    def get(key: str) -> bytes:
        if key.startswith(blobs):
            reads.append(key)
            if fail:
                raise AssertionError(f"unexpected slice read {key}")
        return original(key)

    monkeypatch.setattr(store, "get", get)
    return reads


def test_load_arrays_matches_manifest_and_decoding(settings, store, version):
    data = load_arrays(store, settings, version, image_size=32)
    m = DatasetStore(store, settings).manifest(version).sort_values(["patient_id", "slice_index"])
    n = len(m)
    assert len(data) == n == 20
    assert data.images.shape == (n, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.masks.shape == (n, 32, 32) and data.masks.dtype == np.uint8
    assert set(np.unique(data.masks)) <= {0, 1}
    assert data.labels.dtype == np.int8
    np.testing.assert_array_equal(data.labels, m["label"].to_numpy())
    np.testing.assert_array_equal(data.patient_ids, m["patient_id"].to_numpy())
    np.testing.assert_array_equal(data.slice_index, m["slice_index"].to_numpy())
    np.testing.assert_array_equal(data.masks.sum(axis=(1, 2)), m["tumor_pixels"].to_numpy())
    np.testing.assert_array_equal(data.mask_keys, m["mask_key"].to_numpy())
    for i in (0, 7, n - 1):  # same arrays (channel order included) as imaging's decoding
        np.testing.assert_array_equal(data.images[i], decode_image(store.get(data.image_keys[i])))
    assert set(data.splits) <= {"train", "val", "test"}


def test_load_arrays_resizes_images_and_masks_nearest(settings, store, version):
    data = load_arrays(store, settings, version, image_size=16)
    full = load_arrays(store, settings, version, image_size=32)
    assert data.images.shape == (20, 16, 16, 3) and data.masks.shape == (20, 16, 16)
    np.testing.assert_array_equal(data.labels, full.labels)
    for i in range(len(data)):
        np.testing.assert_array_equal(data.images[i], resize_slice(full.images[i], 16))
        np.testing.assert_array_equal(
            data.masks[i], cv2.resize(full.masks[i], (16, 16), interpolation=cv2.INTER_NEAREST))
    assert set(np.unique(data.masks)) <= {0, 1}
    assert cache_path(settings, version, 16).exists() and cache_path(settings, version, 32).exists()


def test_second_load_is_a_cache_hit_without_slice_reads(settings, store, version, monkeypatch):
    first_reads = _count_slice_reads(monkeypatch, store, settings)
    first = load_arrays(store, settings, version, image_size=32)
    assert len(first_reads) == 2 * len(first)  # one image + one mask read per slice
    monkeypatch.undo()
    _count_slice_reads(monkeypatch, store, settings, fail=True)
    second = load_arrays(store, settings, version, image_size=32)
    for name in ("images", "masks", "labels", "patient_ids", "slice_index", "splits", "mask_keys"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    folder = cache_path(settings, version, 32).parent
    assert [p.name for p in folder.iterdir()] == [f"{version}-32.npz"]  # no temp files left


def test_corrupt_or_stale_cache_is_rebuilt(settings, store, version, monkeypatch):
    good = load_arrays(store, settings, version, image_size=32)
    path = cache_path(settings, version, 32)
    path.write_bytes(b"not an npz at all")
    reads = _count_slice_reads(monkeypatch, store, settings)
    again = load_arrays(store, settings, version, image_size=32)
    assert len(reads) == 2 * len(good)
    np.testing.assert_array_equal(again.images, good.images)
    # a cache with another content hash (e.g. a different manifest) is stale
    with np.load(path) as npz:
        fields = dict(npz)
    fields["content_hash"] = np.str_("0" * 64)
    fields["labels"] = 1 - fields["labels"]
    with path.open("wb") as fh:
        np.savez(fh, **fields)
    reads.clear()
    rebuilt = load_arrays(store, settings, version, image_size=32)
    assert len(reads) == 2 * len(good)
    np.testing.assert_array_equal(rebuilt.labels, good.labels)
    reads.clear()
    load_arrays(store, settings, version, image_size=32)
    assert reads == []  # the rewritten cache is good again


def test_subset_by_split_and_native_masks(settings, store, version):
    data = load_arrays(store, settings, version, image_size=16)
    split = DatasetStore(store, settings).split(version)
    total = 0
    for name in ("train", "val", "test"):
        part = data.subset(name)
        expected = set(split.loc[split["split"] == name, "patient_id"])
        assert set(part.patient_ids) == expected and set(part.splits) <= {name}
        assert part.images.shape[1:] == (16, 16, 3) and len(part.masks) == len(part)
        total += len(part)
    assert total == len(data)
    with pytest.raises(ValueError, match="unknown split 'training'"):
        data.subset("training")
    native = fetch_native_masks(store, data.mask_keys[:3], workers=2)
    assert [m.shape for m in native] == [(32, 32)] * 3 and native[0].dtype == bool
    np.testing.assert_array_equal(native[1], decode_mask(store.get(data.mask_keys[1])) > 0)


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
        for img, m in zip(out, out_masks):
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
    for img, m in zip(x, y[..., 0]):  # the mask followed its image
        bright = img[..., 0] > 128
        assert (bright & (m == 1)).sum() / (bright | (m == 1)).sum() > 0.6
    plain = SliceSequence(images, masks, 4, masks_are_targets=True)
    np.testing.assert_array_equal(plain[1][1][..., 0], masks[4:].astype(np.float32))
    with pytest.raises(ValueError, match="need the slice labels"):
        SliceSequence(images, masks, 4, masks_are_targets=True, sample_weights={0: 1.0, 1: 1.0})


def test_pipeline_runs_under_jax_without_tensorflow():
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from brain_tumor.ml.inputs import SliceSequence
        import keras
        assert keras.backend.backend() == "jax", keras.backend.backend()
        images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
        masks = (images[..., 0] > 128).astype(np.uint8)
        seq = SliceSequence(images, masks, 2, masks_are_targets=True, augment=True, shuffle=True)
        batches = list(seq)
        assert [b[0].shape[0] for b in batches] == [2, 2, 1], [b[0].shape for b in batches]
        assert "tensorflow" not in sys.modules, "tensorflow was imported"
        print("ok")
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_array_dataset_len_and_empty_subset():
    data = ArrayDataset(
        images=np.zeros((2, 4, 4, 3), np.uint8), masks=np.zeros((2, 4, 4), np.uint8),
        labels=np.array([0, 1], np.int8), patient_ids=np.array(["a", "b"]),
        slice_index=np.array([1, 1]), splits=np.array(["train", "train"]),
        mask_keys=np.array(["m1", "m2"]), image_keys=np.array(["i1", "i2"]))
    assert len(data) == 2 and len(data.subset("train")) == 2 and len(data.subset("test")) == 0
