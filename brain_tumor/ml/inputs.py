"""Input pipeline for training and evaluation: decoded uint8 arrays, a local cache, augmentation
and a ``keras.utils.PyDataset``.

NumPy, OpenCV and Keras only (no TensorFlow calls), so it runs under every Keras backend.
Slices are decoded once through ``brain_tumor.ingest.imaging`` and cached per (dataset version,
size) under ``<home>/cache``; dataset versions are immutable, and the cache also stores a hash of
the manifest's content columns and the split, checked on load.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np
import pandas as pd
from tqdm import tqdm

from brain_tumor.ingest.imaging import decode_image, decode_mask, resize_slice
from brain_tumor.settings import Settings
from brain_tumor.store.datasets import DatasetStore
from brain_tumor.store.storage import ObjectStore

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1
_HASH_COLS = ["patient_id", "slice_index", "image_sha256", "mask_sha256", "label", "split"]


@dataclass
class ArrayDataset:
    """Decoded slices of a dataset version, sorted by (patient_id, slice_index)."""

    images: np.ndarray       # N x S x S x 3 uint8, file channel order
    masks: np.ndarray        # N x S x S uint8 in {0, 1}
    labels: np.ndarray       # N int8
    patient_ids: np.ndarray  # N str
    slice_index: np.ndarray  # N int64
    splits: np.ndarray       # N str: train | val | test
    mask_keys: np.ndarray    # N str
    image_keys: np.ndarray   # N str
    #: N x S x S x (3 + 2k): the segmenter's input with neighbouring slices (``add_context``);
    #: None: the segmenter reads ``images``. Not cached.
    seg_images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def segmenter_images(self) -> np.ndarray:
        """What the segmenter reads: ``seg_images`` (2.5D) or the slices themselves."""
        return self.images if self.seg_images is None else self.seg_images

    def subset(self, split: str) -> ArrayDataset:
        """The rows of one split (train, val or test)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.take(self.splits == split)

    def take(self, rows: np.ndarray) -> ArrayDataset:
        """The given rows (a boolean mask or an index array)."""
        return ArrayDataset(**{f.name: None if getattr(self, f.name) is None
                               else getattr(self, f.name)[rows] for f in fields(self)})


#: the ArrayDataset fields the local cache stores
CACHED = tuple(f.name for f in fields(ArrayDataset) if f.name != "seg_images")


def _join(manifest: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """Manifest rows with their patient's split, sorted; ValueError for unsplit patients."""
    if manifest.empty:
        raise ValueError("manifest is empty: no slices to load")
    table = manifest.merge(split[["patient_id", "split"]], on="patient_id", how="left",
                           validate="many_to_one")
    missing = sorted(table.loc[table["split"].isna(), "patient_id"].unique())
    if missing:
        raise ValueError(f"{len(missing)} patient(s) of the manifest are not in the split: "
                         f"{missing[:10]}")
    bad = sorted(set(table["split"]) - set(SPLITS))
    if bad:
        raise ValueError(f"split names must be {SPLITS}, received {bad}")
    return table.sort_values(["patient_id", "slice_index"], kind="stable").reset_index(drop=True)


def content_hash(table: pd.DataFrame) -> str:
    """sha256 over the rows' ids, content hashes, labels and splits (the cache's check)."""
    h = hashlib.sha256()
    for row in table[_HASH_COLS].itertuples(index=False):
        h.update("|".join(map(str, row)).encode() + b"\n")
    return h.hexdigest()


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    binary = (mask > 0).astype(np.uint8)
    if binary.shape == (size, size):
        return binary
    return cv2.resize(binary, (size, size), interpolation=cv2.INTER_NEAREST)


def build_arrays(manifest: pd.DataFrame, split: pd.DataFrame, fetch: Callable[[str], bytes],
                 image_size: int, workers: int = 8, progress: bool = False) -> ArrayDataset:
    """Fetch, decode (once), resize and stack every slice and mask of a manifest."""
    table = _join(manifest, split)
    n = len(table)
    images = np.zeros((n, image_size, image_size, 3), np.uint8)
    masks = np.zeros((n, image_size, image_size), np.uint8)

    image_keys, mask_keys = table["image_key"].tolist(), table["mask_key"].tolist()

    def load(i: int) -> None:
        images[i] = resize_slice(decode_image(fetch(image_keys[i])), image_size)
        masks[i] = _resize_mask(decode_mask(fetch(mask_keys[i])), image_size)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in tqdm(pool.map(load, range(n)), total=n, disable=not progress, desc="slices"):
            pass
    return ArrayDataset(
        images=images, masks=masks, labels=table["label"].to_numpy(np.int8),
        patient_ids=table["patient_id"].to_numpy(str), slice_index=table["slice_index"]
        .to_numpy(np.int64), splits=table["split"].to_numpy(str),
        mask_keys=table["mask_key"].to_numpy(str), image_keys=table["image_key"].to_numpy(str))


def _read_cache(path: Path, expected_hash: str, image_size: int) -> ArrayDataset | None:
    """The cached arrays, or None (with the reason logged) when missing, unreadable or stale."""
    if not path.exists():
        log.info("array cache miss: %s does not exist", path)
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if int(npz["format"]) != CACHE_FORMAT or str(npz["content_hash"]) != expected_hash:
                log.warning("array cache %s is stale (format or content hash differs); rebuilding",
                            path)
                return None
            data = ArrayDataset(**{name: npz[name] for name in CACHED})
    except Exception as exc:
        log.warning("array cache %s is unreadable (%s: %s); rebuilding", path,
                    type(exc).__name__, exc)
        return None
    n = len(data.labels)
    if (data.images.shape != (n, image_size, image_size, 3) or data.images.dtype != np.uint8
            or data.masks.shape != (n, image_size, image_size)
            or any(len(getattr(data, name)) != n for name in CACHED)):
        log.warning("array cache %s has inconsistent shapes; rebuilding", path)
        return None
    log.info("array cache hit: %s (%d slices)", path, n)
    return data


def _write_cache(path: Path, data: ArrayDataset, content: str) -> None:
    """Write the cache atomically: a temp file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, format=np.int64(CACHE_FORMAT), content_hash=np.str_(content),
                     **{name: getattr(data, name) for name in CACHED})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("array cache written: %s", path)


def cache_path(settings: Settings, dataset_version: str, image_size: int) -> Path:
    """Where the arrays of a dataset version at one size are cached."""
    return settings.home_dir / "cache" / f"{dataset_version}-{image_size}.npz"


def load_arrays(store: ObjectStore, settings: Settings, dataset_version: str,
                image_size: int | None = None, progress: bool = False) -> ArrayDataset:
    """A dataset version's decoded arrays, from the local cache or built from S3 (then cached)."""
    size = settings.image_size if image_size is None else int(image_size)
    if size < 1:
        raise ValueError(f"image_size must be positive, received {image_size}")
    datasets = DatasetStore(store, settings)
    manifest, split = datasets.manifest(dataset_version), datasets.split(dataset_version)
    content = content_hash(_join(manifest, split))
    path = cache_path(settings, dataset_version, size)
    cached = _read_cache(path, content, size)
    if cached is not None:
        return cached
    data = build_arrays(manifest, split, store.get, size, settings.io_workers, progress)
    _write_cache(path, data, content)
    return data


def normalize_dataset(data: ArrayDataset, method: str) -> ArrayDataset:
    """The dataset with its images normalized study by study (``brain_tumor.ml.normalize``)."""
    from brain_tumor.ml.normalize import NONE, normalize_by_study

    if data.seg_images is not None:
        raise ValueError("normalize the dataset before add_context: its seg_images were built "
                         "from the unnormalized slices")
    if method == NONE:
        return data
    return replace(data, images=normalize_by_study(data.images, data.patient_ids, method))


def for_model(data: ArrayDataset, record: dict[str, Any]) -> ArrayDataset:
    """The dataset as a model version reads it: normalized per study (``intensity_norm``) and
    with the segmenter's neighbouring slices (``seg_context``), both from its model.json."""
    from brain_tumor.ml.context import record_context
    from brain_tumor.ml.normalize import record_method

    return add_context(normalize_dataset(data, record_method(record)), record_context(record))


def add_context(data: ArrayDataset, context: int) -> ArrayDataset:
    """The dataset with the segmenter's 2.5D input (``brain_tumor.ml.context``) in
    ``seg_images``; 0: none. Build it on whole studies, before any rows are dropped."""
    from brain_tumor.ml.context import grouped_context

    if not context:
        return replace(data, seg_images=None)
    return replace(data, seg_images=grouped_context(data.images, data.patient_ids, context))


def fetch_native_masks(store: ObjectStore, keys: Sequence[str], workers: int = 8
                       ) -> list[np.ndarray]:
    """Masks at their stored size, as boolean arrays (for evaluation at native resolution)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda k: decode_mask(store.get(k)) > 0, list(keys)))


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Balanced class weights n / (2 * count_c) for binary labels."""
    labels = np.asarray(labels).ravel()
    extra = sorted(set(np.unique(labels).tolist()) - {0, 1})
    if extra:
        raise ValueError(f"labels must be 0 or 1, received values {extra[:10]}")
    counts = {c: int((labels == c).sum()) for c in (0, 1)}
    if min(counts.values()) == 0:
        raise ValueError(f"class_weights needs both classes, received counts {counts}")
    return {c: len(labels) / (2.0 * k) for c, k in counts.items()}


def augment_batch(images: np.ndarray, masks: np.ndarray | None, rng: np.random.Generator, *,
                  max_rotation_deg: float = 10, max_shift: float = 0.05, jitter: float = 0.1
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Random flip, rotation, shift (same for masks) and intensity jitter; uint8 in, uint8 out."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be N x H x W x C uint8, received {images.shape} "
                         f"{images.dtype}")
    if masks is not None and (len(masks) != len(images) or masks.shape[1:3] != images.shape[1:3]):
        raise ValueError(f"masks {masks.shape} do not match images {images.shape}")
    out = np.empty_like(images)
    out_masks = None if masks is None else np.empty_like(masks)
    h, w = images.shape[1:3]
    border = {"borderMode": cv2.BORDER_CONSTANT, "borderValue": 0}
    for i in range(len(images)):
        flip = rng.random() < 0.5
        angle = rng.uniform(-max_rotation_deg, max_rotation_deg)
        tx, ty = rng.uniform(-max_shift, max_shift, 2) * (w, h)
        scale = rng.uniform(1 - jitter, 1 + jitter)
        offset = rng.uniform(-jitter, jitter) * 255 * 0.1
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        matrix[:, 2] += (tx, ty)
        image = images[i][:, ::-1] if flip else images[i]
        warped = cv2.warpAffine(np.ascontiguousarray(image), matrix, (w, h),
                                flags=cv2.INTER_LINEAR, **border).reshape(image.shape)
        out[i] = np.clip(np.rint(warped.astype(np.float32) * scale + offset), 0, 255)
        if masks is not None and out_masks is not None:
            mask = masks[i][:, ::-1] if flip else masks[i]
            out_masks[i] = cv2.warpAffine(np.ascontiguousarray(mask), matrix, (w, h),
                                          flags=cv2.INTER_NEAREST, **border).reshape(mask.shape)
    return out, out_masks


def tumor_batch_order(is_tumor: np.ndarray, batch_size: int, tumor_fraction: float,
                      batches: int, rng: np.random.Generator) -> np.ndarray:
    """Row order for ``batches`` full batches, each with round(batch_size * tumor_fraction)
    tumor rows and the rest tumor-free, both drawn without repeats until their pool runs out.

    Tumor rows are oversampled (a pool shorter than needed is reshuffled and reused), tumor-free
    rows undersampled; within a batch the order is shuffled.
    """
    flags = np.asarray(is_tumor, bool).ravel()
    if not 0 < tumor_fraction < 1:
        raise ValueError(f"tumor_fraction must be in (0, 1), received {tumor_fraction!r}")
    if batch_size < 1 or batches < 1:
        raise ValueError(f"batch_size and batches must be >= 1, received {batch_size}, {batches}")
    tumor, empty = np.flatnonzero(flags), np.flatnonzero(~flags)
    if len(tumor) == 0 or len(empty) == 0:
        raise ValueError(f"need tumor and tumor-free rows, received {len(tumor)} and "
                         f"{len(empty)}")
    per_batch = min(batch_size, max(1, round(batch_size * tumor_fraction)))

    def draw(pool: np.ndarray, count: int) -> np.ndarray:
        rounds = -(-count // len(pool))
        return np.concatenate([rng.permutation(pool) for _ in range(rounds)])[:count]

    picked_tumor = draw(tumor, per_batch * batches).reshape(batches, per_batch)
    rest = batch_size - per_batch
    picked_empty = draw(empty, rest * batches).reshape(batches, rest)
    rows = np.concatenate([picked_tumor, picked_empty], axis=1)
    return rng.permuted(rows, axis=1).reshape(-1)


class SliceSequence(keras.utils.PyDataset):
    """Batches of raw 0..255 float32 slices with labels (classifier) or masks (segmenter).

    With ``tumor_fraction`` > 0 (and ``shuffle``), every batch is full and holds that share of
    tumor slices (``tumor_batch_order``); the tumor flags come from ``labels``, or from the masks
    when the masks are the targets.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, batch_size: int, *,
                 augment: bool = False, masks_are_targets: bool = False,
                 sample_weights: dict[int, float] | None = None, labels: np.ndarray | None = None,
                 shuffle: bool = False, seed: int = 0, tumor_fraction: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, received {batch_size}")
        if len(images) == 0 or len(targets) != len(images):
            raise ValueError(f"need a non-empty set of images with one target each, received "
                             f"{len(images)} images and {len(targets)} targets")
        if masks_are_targets and targets.shape[1:3] != images.shape[1:3]:
            raise ValueError(f"masks {targets.shape} do not match images {images.shape}")
        self.images, self.targets = images, targets
        self.batch_size, self.augment = batch_size, augment
        self.masks_are_targets = masks_are_targets
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.weights: np.ndarray | None = None
        if sample_weights is not None:
            if labels is None and masks_are_targets:
                raise ValueError("sample_weights with mask targets need the slice labels")
            lab = np.asarray(targets if labels is None else labels).astype(int).ravel()
            missing = sorted(set(lab.tolist()) - set(sample_weights))
            if len(lab) != len(images) or missing:
                raise ValueError(f"labels must cover every slice with a weight, received "
                                 f"{len(lab)} labels, classes without weight {missing}")
            self.weights = np.array([sample_weights[c] for c in lab], np.float32)
        self.tumor_fraction = self._check_fraction(tumor_fraction, labels)
        self.order = self._order()

    def _check_fraction(self, fraction: float, labels: np.ndarray | None) -> float:
        if not 0 <= fraction < 1:
            raise ValueError(f"tumor_fraction must be in [0, 1), received {fraction!r}")
        self.is_tumor: np.ndarray | None = None
        if fraction == 0 or not self.shuffle:
            return 0.0
        if labels is not None:
            flags = np.asarray(labels).ravel() > 0
        elif self.masks_are_targets:
            flags = self.targets.reshape(len(self.targets), -1).any(axis=1)
        else:
            flags = np.asarray(self.targets).ravel() > 0
        if len(flags) != len(self.images):
            raise ValueError(f"{len(flags)} labels for {len(self.images)} slices")
        if flags.all() or not flags.any():
            log.warning("tumor oversampling off: %d of %d slices have a tumor", int(flags.sum()),
                        len(flags))
            return 0.0
        self.is_tumor = flags
        return float(fraction)

    def _order(self) -> np.ndarray:
        n = len(self.images)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.tumor_fraction and self.is_tumor is not None:
            return tumor_batch_order(self.is_tumor, self.batch_size, self.tumor_fraction,
                                     len(self), rng)
        return rng.permutation(n)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range 0..{len(self) - 1}")
        idx = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        x, t = self.images[idx], self.targets[idx]
        if self.augment:  # one generator per (seed, epoch, batch): order-independent
            rng = np.random.default_rng([self.seed, self.epoch, index])
            x, m = augment_batch(x, t if self.masks_are_targets else None, rng)
            t = m if m is not None else t
        x = x.astype(np.float32)
        if self.masks_are_targets:
            y = t.reshape(*t.shape[:3], 1).astype(np.float32)
        else:
            y = np.asarray(t, np.float32).reshape(-1, 1)
        if self.weights is not None:
            return x, y, self.weights[idx]
        return x, y

    def on_epoch_end(self) -> None:
        """Next epoch: a new shuffle and new augmentations, both set by the seed."""
        self.epoch += 1
        self.order = self._order()
