"""Relabeling from the mask: tumor = any mask pixel set.

Mask policy: masks must hold only {0, 255} or only {0, 1} (either convention, as exported).
Anything else (e.g. 0/128/255 from a lossy tool, or a probability map) is **rejected** into the
quarantine, never silently binarized: a guessed threshold could flip a slice's label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brain_tumor.ingest.imaging import SliceError

ALLOWED_MASK_VALUES = (frozenset({0, 255}), frozenset({0, 1}))


@dataclass(frozen=True)
class SliceLabel:
    """The label a mask implies, with the tumor's size and bounding box."""

    label: int  # 1 = tumor
    tumor_pixels: int
    bbox: tuple[int, int, int, int] | None  # y0, x0, y1, x1 (inclusive), None when no tumor


def binary_mask(mask: np.ndarray) -> np.ndarray:
    """Boolean tumor mask; SliceError('mask_values') if values are outside the policy."""
    values = frozenset(int(v) for v in np.unique(mask))
    if not any(values <= allowed for allowed in ALLOWED_MASK_VALUES):
        shown = sorted(values)[:8]
        raise SliceError("mask_values", f"mask values {shown}{'...' if len(values) > 8 else ''} "
                                        "are outside {0, 255} and {0, 1}", "mask")
    return mask > 0


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive (y0, x0, y1, x1) of the set pixels, or None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def relabel(mask: np.ndarray) -> SliceLabel:
    """Label a slice from its mask: 1 if and only if any pixel is set."""
    tumor = binary_mask(mask)
    pixels = int(tumor.sum())
    return SliceLabel(label=int(pixels > 0), tumor_pixels=pixels, bbox=bounding_box(tumor))
