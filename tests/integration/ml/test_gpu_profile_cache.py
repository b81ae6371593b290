"""The GPU profile's path, at a tiny size on the CPU: a dataset's arrays go out as xz shards
under a byte limit (whole patients each), come back identical, and ``bench/quality.py
run-cache`` trains under JAX, tunes on the validation patients and evaluates the test patients
once, leaving result.json and the plots."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brain_tumor.ml.inputs import ArrayDataset

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "bench"))
from array_cache import read_shards, write_shards  # noqa: E402

SIZE = 32


def _squares_dataset(patients: int = 9, slices: int = 6, seed: int = 0) -> ArrayDataset:
    """Noisy slices, a bright square on every other one (its mask); the first 5 patients train,
    the next 2 validate, the rest test."""
    rng = np.random.default_rng(seed)
    n = patients * slices
    images = rng.integers(0, 60, size=(n, SIZE, SIZE, 3)).astype(np.uint8)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(0, n, 2):
        r, c = rng.integers(4, SIZE - 12, size=2)
        images[i, r:r + 8, c:c + 8] = 220
        masks[i, r:r + 8, c:c + 8] = 1
    pids = np.repeat([f"TCGA_XX_{p:04d}" for p in range(patients)], slices)
    splits = np.repeat((["train"] * 5 + ["val"] * 2 + ["test"] * patients)[:patients], slices)
    return ArrayDataset(images=images, masks=masks, labels=masks.any(axis=(1, 2)).astype(np.int8),
                        patient_ids=pids, slice_index=np.tile(np.arange(slices), patients),
                        splits=splits, mask_keys=pids, image_keys=pids)


def test_shards_hold_whole_patients_under_the_limit_and_read_back_the_same(tmp_path):
    data = _squares_dataset()
    limit = 40_000
    paths = write_shards(data, tmp_path / "cache", limit, dataset_version="ds-1")
    assert len(paths) > 1 and all(p.stat().st_size <= limit for p in paths)
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    held = [p for shard in index["shards"] for p in shard["patients"]]
    assert sorted(held) == sorted(set(data.patient_ids.tolist())) and len(held) == len(set(held))
    back, version = read_shards(tmp_path / "cache")
    assert version == "ds-1"
    for name in ("images", "masks", "labels", "patient_ids", "slice_index", "splits"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name))
    one, _ = read_shards(paths[0])
    assert set(one.patient_ids.tolist()) == set(index["shards"][0]["patients"])


def test_a_patient_over_the_limit_and_a_broken_folder_are_named(tmp_path):
    data = _squares_dataset(patients=2)
    with pytest.raises(ValueError, match="patient TCGA_XX_0000 alone compresses to"):
        write_shards(data, tmp_path / "tiny", 100)
    write_shards(data, tmp_path / "ok", 1_000_000)
    (tmp_path / "ok" / "shard-000.npz.xz").write_bytes(b"not xz")
    with pytest.raises(ValueError, match="shard-000.npz.xz is not an array-cache shard"):
        read_shards(tmp_path / "ok")
    with pytest.raises(ValueError, match="has no index.json"):
        read_shards(tmp_path)


def test_run_cache_trains_under_jax_tunes_on_validation_and_keeps_plots(tmp_path):
    write_shards(_squares_dataset(), tmp_path / "cache", 1_000_000, dataset_version="ds-1")
    tiny = {"backbone": "tiny", "epochs": 1, "seg_epochs": 2, "seg_depth": 2,
            "seg_base_filters": 4, "batch_size": 8, "warmup_epochs": 0, "bootstrap_samples": 20}
    sets = [arg for k, v in tiny.items() for arg in ("--set", f"{k}={v}")]
    out = tmp_path / "out"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, str(REPO / "bench" / "quality.py"), "run-cache",
                          str(tmp_path / "cache"), "--profile", "gpu", *sets,
                          "--out-dir", str(out)],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["keras_backend"] == "jax" and result["dataset_version"] == "ds-1"
    assert result["epochs_run"] == {"classifier": 1, "segmenter": 2}
    assert result["postprocess"]["tuned_on"] == "validation"
    assert result["postprocess"]["validation_patients"] == result["val_patients"] == 2
    metrics = result["metrics"]
    assert metrics["postprocess"]["params"] == result["postprocess"]["params"]
    assert metrics["counts"]["patients"] == result["test_patients"] == 2
    assert metrics["slice"]["ranked_by"] == "tumor_score"
    assert {"roc.png", "pr.png", "confusion.png"} <= {p.name for p in (out / "plots").iterdir()}
