"""Tumor-mask geometry in plain numpy: area, bounding box, centroid, study volume.

Kept free of Keras/TensorFlow so that reporting code can use it without the ML stack.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def to_bool_mask(mask: Any, name: str = "mask") -> np.ndarray:
    """Return `mask` as a boolean array (nonzero = tumor); float masks must hold only 0/1."""
    arr = np.asarray(mask)
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not np.all((arr == 0) | (arr == 1)):
            raise ValueError(
                f"{name} is a float array with values other than 0/1 "
                f"(range {float(np.nanmin(arr))}..{float(np.nanmax(arr))}); "
                "threshold probabilities into a binary mask first"
            )
        return arr == 1
    if np.issubdtype(arr.dtype, np.integer):
        return arr != 0
    raise ValueError(f"{name} must be a boolean, integer or 0/1 float array, got dtype {arr.dtype}")


def _as_2d(mask: Any) -> np.ndarray:
    arr = to_bool_mask(mask)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"mask must have shape (H, W) or (H, W, 1), got shape {arr.shape}")
    return arr


def mask_geometry(mask: np.ndarray) -> dict[str, Any]:
    """Area (pixels), inclusive bbox (y0, x0, y1, x1), centroid (y, x) of a mask; None if empty."""
    arr = _as_2d(mask)
    ys, xs = np.nonzero(arr)
    area = int(ys.size)
    if area == 0:
        return {"area": 0, "bbox": None, "centroid": None}
    bbox = (int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max()))
    centroid = (float(ys.mean()), float(xs.mean()))
    return {"area": area, "bbox": bbox, "centroid": centroid}


def study_volume(masks: np.ndarray | Iterable[np.ndarray]) -> int:
    """Tumor volume of a study in voxels: the sum of the slice areas (nonzero pixels)."""
    if isinstance(masks, np.ndarray):
        return int(np.count_nonzero(to_bool_mask(masks, "masks")))
    return int(sum(np.count_nonzero(to_bool_mask(m, "masks")) for m in masks))
