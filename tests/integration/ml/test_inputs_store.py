"""The input pipeline against a dataset version on S3: arrays, the local cache, native masks; and
the whole pipeline under the JAX backend in a fresh process."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from brain_tumor import steps
from brain_tumor.devtools.synth import SynthSpec, make_export
from brain_tumor.ingest.exports import upload_export
from brain_tumor.ingest.imaging import decode_image, decode_mask, resize_slice
from brain_tumor.ingest.run import ingest_export
from brain_tumor.ml.inputs import (
    cache_path,
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


