"""Per-study intensity normalization of the model input, shared by training and scoring.

``volume_percentile``: for one study (all slices of one patient folder), each channel is mapped
linearly so that the 1st and 99th percentiles of its values inside the brain region (voxels
where any channel is non-zero) become 0 and 255, clipped, and the background stays 0. Slices
stay uint8 H x W x 3, so augmentation, caching and the models' own rescaling are unchanged.
``none`` returns the slices as they are. The method a model was trained with is stored in its
model.json (``intensity_norm``); scoring reads it from there (``record_method``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NONE, VOLUME_PERCENTILE = "none", "volume_percentile"
METHODS = (NONE, VOLUME_PERCENTILE)
#: percentiles of the brain region mapped to 0 and 255
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.0


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"intensity normalization must be one of {METHODS}, received {method!r}")
    return method


def _as_slices(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    slices = [np.asarray(img) for img in images]
    for i, img in enumerate(slices):
        if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise ValueError(f"slice {i} must be H x W x 3 uint8, received {img.shape} "
                             f"{img.dtype}")
    return slices


def volume_range(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Per channel (low, high) percentiles of a study's brain region; shape (3, 2), float64.

    A study without any non-zero voxel gets (0, 255) for every channel (nothing to scale).
    """
    slices = _as_slices(images)
    if not slices:
        raise ValueError("no slices given")
    voxels = np.concatenate([img.reshape(-1, 3)[img.reshape(-1, 3).any(axis=1)]
                             for img in slices])
    if len(voxels) == 0:
        return np.tile([0.0, 255.0], (3, 1))
    low, high = np.percentile(voxels, [LOW_PERCENTILE, HIGH_PERCENTILE], axis=0)
    return np.stack([low, high], axis=1)


def _apply(img: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    low, high = ranges[:, 0], ranges[:, 1]
    span = np.where(high > low, high - low, 1.0)
    scaled = (img.astype(np.float32) - low.astype(np.float32)) / span.astype(np.float32) * 255.0
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    out[~img.any(axis=-1)] = 0
    return out


def normalize_study(images: np.ndarray | Sequence[np.ndarray],
                    method: str = VOLUME_PERCENTILE) -> np.ndarray | list[np.ndarray]:
    """One study's uint8 H x W x 3 slices normalized together; same container and shapes back.

    A stacked N x H x W x 3 array comes back as an array, a list of slices (sizes may differ)
    as a list.
    """
    _check_method(method)
    if method == NONE:
        return images
    slices = _as_slices(images)
    ranges = volume_range(slices)
    out = [_apply(img, ranges) for img in slices]
    if isinstance(images, np.ndarray):
        return np.stack(out) if out else np.asarray(images).copy()
    return out


def normalize_by_study(images: np.ndarray, study_ids: np.ndarray,
                       method: str = VOLUME_PERCENTILE) -> np.ndarray:
    """N x H x W x 3 uint8 slices of several studies, each study normalized on its own."""
    _check_method(method)
    if method == NONE:
        return images
    ids = np.asarray(study_ids)
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} study ids for {len(images)} slices")
    out = np.empty_like(images)
    for study in dict.fromkeys(ids.tolist()):
        rows = np.flatnonzero(ids == study)
        out[rows] = normalize_study(images[rows], method)
    log.info("intensity normalization %s applied to %d studies", method, len(set(ids.tolist())))
    return out


def record_method(record: Mapping[str, Any]) -> str:
    """The normalization a model version was trained with (model.json; 'none' when absent)."""
    return _check_method(str(record.get("intensity_norm") or NONE))
