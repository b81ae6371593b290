"""Scanner intensities to the 8-bit slices the model was trained on, and predicted masks back.

The ``kaggle_3m`` slices were made per sequence volume by ``flair-segmentation/
preprocessing3D.m`` in the MaciejMazurowski/brain-segmentation repository. The same rule here:

1. resize every slice so that its smaller side is ``SIZE`` (256) pixels, bicubic (a mask:
   nearest neighbour), the larger side to ``ceil(scale * side)`` as MATLAB's ``imresize`` does;
2. centre-crop to ``SIZE`` x ``SIZE``; the crop starts where that file's ``center_crop`` starts
   it: 1-based ``max(1, floor(margin / 2))``, so one pixel before the exact centre when the
   margin is at least 2;
3. clip negative values (bicubic overshoot) to 0;
4. minimum = 2nd percentile of the non-zero voxels (MATLAB's ``prctile``: midpoint
   interpolation, numpy's ``hazen``);
5. histogram of the volume with bins of width 2 on edges at multiples of 2; the peak is the left
   edge of the fullest bin whose left edge is at or above the minimum (the first on ties);
6. maximum = minimum + 2.55 x (peak - minimum), so the peak lands at 100 of 255;
7. clip to [minimum, maximum] and scale to 0..255, rounded to uint8.

MATLAB's ``imresize`` smooths before it shrinks (antialiasing); ``cv2.resize`` bicubic does not,
so a source larger than 256 pixels is first shrunk with area averaging to twice the target and
then bicubic; an upscale is plain bicubic.

``GridTransform`` keeps the resize and crop of a volume so that a mask predicted on the
256 x 256 slices maps back onto the source grid (``to_source_grid``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

SIZE = 256  # side of the slices the rule makes
PEAK_FACTOR = 2.55  # maximum = minimum + PEAK_FACTOR * (peak - minimum)
BIN_WIDTH = 2.0  # histogram bin width, in scanner units
LOW_PERCENTILE = 2.0  # minimum = this percentile of the non-zero voxels
MAX_BINS = 1 << 22  # a wider value range cannot hold a meaningful histogram peak


@dataclass(frozen=True)
class GridTransform:
    """How a source slice grid became the SIZE x SIZE model grid: resize, then crop."""

    source_shape: tuple[int, int]  # (rows, columns) of the source slices
    resized_shape: tuple[int, int]  # (rows, columns) after the resize
    crop: tuple[int, int]  # (first row, first column) of the crop in the resized grid
    size: int = SIZE

    @property
    def scale(self) -> tuple[float, float]:
        """(row, column) factors from source pixels to model-grid pixels."""
        return (self.resized_shape[0] / self.source_shape[0],
                self.resized_shape[1] / self.source_shape[1])

    def to_dict(self) -> dict[str, Any]:
        """The transform as JSON-ready lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GridTransform:
        """The transform ``to_dict`` wrote."""
        return cls(tuple(data["source_shape"]), tuple(data["resized_shape"]),  # type: ignore[arg-type]
                   tuple(data["crop"]), int(data.get("size", SIZE)))  # type: ignore[arg-type]


@dataclass(frozen=True)
class IntensityWindow:
    """The scanner values mapped to 0 and 255, and the histogram peak (mapped to 100)."""

    minimum: float
    maximum: float
    peak: float


def grid_transform(shape: tuple[int, int], size: int = SIZE) -> GridTransform:
    """The resize (smaller side to size) and centre crop of a rows x columns slice grid."""
    rows, cols = (int(s) for s in shape)
    if rows < 1 or cols < 1:
        raise ValueError(f"slice shape must be positive, received {shape!r}")
    if min(rows, cols) == size:
        resized = (rows, cols)
    else:
        scale = size / min(rows, cols)
        resized = (max(size, math.ceil(scale * rows - 1e-9)),
                   max(size, math.ceil(scale * cols - 1e-9)))
    crop = tuple(max(0, (n - size) // 2 - 1) for n in resized)
    return GridTransform((rows, cols), resized, crop, size)  # type: ignore[arg-type]


def _resize(plane: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    """One slice resized to (rows, columns)."""
    rows, cols = shape
    if plane.shape == (rows, cols):
        return plane
    if nearest:
        return cv2.resize(plane, (cols, rows), interpolation=cv2.INTER_NEAREST)
    if plane.shape[0] > 2 * rows and plane.shape[1] > 2 * cols:
        plane = cv2.resize(plane, (2 * cols, 2 * rows), interpolation=cv2.INTER_AREA)
    return cv2.resize(plane, (cols, rows), interpolation=cv2.INTER_CUBIC)


def resize_and_crop(voxels: np.ndarray, transform: GridTransform,
                    nearest: bool = False) -> np.ndarray:
    """Z x H x W values (float32; a mask with nearest=True keeps its dtype) on the model grid."""
    if voxels.ndim != 3 or tuple(voxels.shape[1:]) != transform.source_shape:
        raise ValueError(f"voxels must be Z x {transform.source_shape[0]} x "
                         f"{transform.source_shape[1]}, received shape {voxels.shape}")
    r0, c0 = transform.crop
    n = transform.size
    dtype = np.uint8 if nearest else np.float32
    out = np.empty((voxels.shape[0], n, n), dtype)
    for k, plane in enumerate(voxels):
        resized = _resize(np.ascontiguousarray(plane, dtype), transform.resized_shape, nearest)
        out[k] = resized[r0:r0 + n, c0:c0 + n]
    return out


def intensity_window(values: np.ndarray) -> IntensityWindow:
    """The rule's window of a volume already resized, cropped and clipped at 0.

    ValueError when the volume holds no positive voxel or its range has no usable peak.
    """
    nonzero = values[values != 0]
    if nonzero.size == 0:
        raise ValueError("the volume holds no non-zero voxel, received an all-zero volume")
    minimum = float(np.percentile(nonzero, LOW_PERCENTILE, method="hazen"))
    top = float(nonzero.max())
    first_edge = BIN_WIDTH * math.floor(float(values.min()) / BIN_WIDTH)
    bins = math.floor((top - first_edge) / BIN_WIDTH) + 1
    if bins > MAX_BINS:
        raise ValueError(f"value range {first_edge}..{top} is too wide for bins of "
                         f"{BIN_WIDTH}, received {bins} bins")
    index = np.floor((values.ravel() - first_edge) / BIN_WIDTH).astype(np.int64)
    counts = np.bincount(np.clip(index, 0, bins - 1), minlength=bins)
    edges = first_edge + BIN_WIDTH * np.arange(bins)
    start = int(np.searchsorted(edges, minimum, side="left"))
    if start >= bins:
        raise ValueError(f"no histogram bin of width {BIN_WIDTH} at or above the minimum "
                         f"{minimum:g}: the values span only {first_edge:g}..{top:g}, received "
                         f"a volume too narrow in range for the rule")
    peak = float(edges[start + int(np.argmax(counts[start:]))])
    maximum = minimum + PEAK_FACTOR * (peak - minimum)
    if not maximum > minimum:
        raise ValueError(f"histogram peak {peak:g} is not above the minimum {minimum:g}, "
                         f"received a volume without a usable intensity window")
    return IntensityWindow(minimum, maximum, peak)


def apply_window(values: np.ndarray, window: IntensityWindow) -> np.ndarray:
    """values clipped to the window and scaled to 0..255 uint8 (rounded half up)."""
    scaled = (np.clip(values, window.minimum, window.maximum) - window.minimum) / (
        window.maximum - window.minimum)
    return np.floor(scaled * 255.0 + 0.5).astype(np.uint8)


def map_volume(voxels: np.ndarray,
               size: int = SIZE) -> tuple[np.ndarray, GridTransform, IntensityWindow]:
    """A Z x H x W volume of scanner values as Z x size x size uint8, with the resize/crop and
    window used (ValueError for a volume the rule cannot map)."""
    if voxels.ndim != 3:
        raise ValueError(f"voxels must be Z x H x W, received shape {voxels.shape}")
    transform = grid_transform(voxels.shape[1:], size)
    values = np.maximum(resize_and_crop(voxels, transform), 0.0)
    window = intensity_window(values)
    return apply_window(values, window), transform, window


def to_source_grid(mask: np.ndarray, transform: GridTransform) -> np.ndarray:
    """A size x size mask on the model grid as a boolean mask on the source grid (nearest)."""
    arr = np.asarray(mask)
    if arr.shape != (transform.size, transform.size):
        raise ValueError(f"mask must be {transform.size}x{transform.size}, received shape "
                         f"{arr.shape}")
    canvas = np.zeros(transform.resized_shape, np.uint8)
    r0, c0 = transform.crop
    canvas[r0:r0 + transform.size, c0:c0 + transform.size] = arr != 0
    rows, cols = transform.source_shape
    if canvas.shape != (rows, cols):
        canvas = cv2.resize(canvas, (cols, rows), interpolation=cv2.INTER_NEAREST)
    return canvas.astype(bool)
