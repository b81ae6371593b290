"""Decoded arrays of a dataset version as xz-compressed shards, for training away from S3.

The GPU profile runs on a machine without S3 and takes at most 64 MiB per call, so
``bench/quality.py export-cache`` writes a folder of shards, each under a byte limit and each
holding whole patients (a patient's slices never straddle two shards), and ``run-cache`` reads a
folder (or one shard) back into an ``ArrayDataset``. A shard is an uncompressed ``.npz``
compressed with xz (``shard-000.npz.xz``); ``index.json`` lists the shards, their patients and
the dataset version.
"""

from __future__ import annotations

import io
import json
import logging
import lzma
from pathlib import Path

import numpy as np

from brain_tumor.ml.inputs import ArrayDataset

log = logging.getLogger(__name__)

INDEX = "index.json"
#: a first guess of how many raw bytes fill a shard (the 81 LGG patients at 256 px: 780 MB of
#: slices and masks in 217.5 MiB of shards, about 3.4 times)
GUESSED_RATIO = 3.0
#: fields stored per slice (the keys are not needed away from S3)
STORED = ("images", "masks", "labels", "patient_ids", "slice_index", "splits")


def _encode(data: ArrayDataset) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{name: getattr(data, name) for name in STORED})
    return lzma.compress(buf.getvalue(), preset=6)


def _patient_groups(data: ArrayDataset, raw_limit: float) -> list[list[str]]:
    """Consecutive patients, each group about ``raw_limit`` raw bytes (at least one patient)."""
    per_slice = data.images[0].nbytes + data.masks[0].nbytes if len(data) else 0
    groups: list[list[str]] = [[]]
    size = 0.0
    patients, counts = np.unique(data.patient_ids, return_counts=True)
    for patient, count in zip(patients.tolist(), counts.tolist(), strict=True):
        if groups[-1] and size + count * per_slice > raw_limit:
            groups.append([])
            size = 0.0
        groups[-1].append(patient)
        size += count * per_slice
    return [g for g in groups if g]


def write_shards(data: ArrayDataset, folder: Path, max_bytes: int,
                 dataset_version: str = "") -> list[Path]:
    """Write ``data`` as shards of at most ``max_bytes`` each; returns their paths.

    A group of patients whose shard comes out too big is halved and written again; a single
    patient over the limit is an error (it cannot be split).
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, received {max_bytes}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pending = _patient_groups(data, max_bytes * GUESSED_RATIO)
    written: list[tuple[list[str], bytes]] = []
    done = 0
    total = len(np.unique(data.patient_ids))
    while pending:
        group = pending.pop(0)
        blob = _encode(data.take(np.isin(data.patient_ids, group)))
        if len(blob) <= max_bytes:
            written.append((group, blob))
            done += len(group)
            log.info("compressed %d of %d patients (%d in this shard, %.1f MiB)", done, total,
                     len(group), len(blob) / 2**20)
            continue
        if len(group) == 1:
            raise ValueError(f"patient {group[0]} alone compresses to {len(blob)} bytes, over "
                             f"the shard limit of {max_bytes}")
        log.info("%d patients compress to %.1f MiB, over the limit: halving the group",
                 len(group), len(blob) / 2**20)
        half = len(group) // 2
        pending[:0] = [group[:half], group[half:]]
    paths = []
    entries = []
    for i, (group, blob) in enumerate(written):
        path = folder / f"shard-{i:03d}.npz.xz"
        path.write_bytes(blob)
        paths.append(path)
        entries.append({"file": path.name, "bytes": len(blob), "patients": group})
        log.info("wrote %s: %d patients, %.1f MiB", path.name, len(group), len(blob) / 2**20)
    (folder / INDEX).write_text(json.dumps({"dataset_version": dataset_version,
                                            "slices": len(data), "shards": entries}, indent=2))
    return paths


def _decode(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(lzma.decompress(path.read_bytes()))) as z:
            return {name: z[name] for name in STORED}
    except (lzma.LZMAError, OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path} is not an array-cache shard: {err}") from err


def read_shards(path: Path) -> tuple[ArrayDataset, str]:
    """The slices of a shard folder (every shard its ``index.json`` lists) or of one shard, in
    (patient_id, slice_index) order, and the dataset version the index names ('' for a lone
    shard)."""
    path = Path(path)
    if path.is_dir():
        index_path = path / INDEX
        if not index_path.is_file():
            raise ValueError(f"{path} has no {INDEX}: not a folder written by export-cache")
        index = json.loads(index_path.read_text())
        files = [path / entry["file"] for entry in index["shards"]]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"shards listed in {index_path} are missing: {missing}")
        version = str(index.get("dataset_version", ""))
    else:
        files, version = [path], ""
    parts = [_decode(f) for f in files]
    merged = {name: np.concatenate([p[name] for p in parts]) for name in STORED}
    order = np.lexsort((merged["slice_index"], merged["patient_ids"]))
    merged = {name: values[order] for name, values in merged.items()}
    keys = merged["patient_ids"]
    data = ArrayDataset(**merged, mask_keys=keys, image_keys=keys)
    return data, version
