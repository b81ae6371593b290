"""Neighbouring slices as extra segmenter input (2.5D), one definition for training and scoring.

With ``seg_context`` k > 0 the segmenter sees, beside a slice's three channels (pre-contrast,
FLAIR, post-contrast), the FLAIR channel of the k slices before it and the k after it in the
same study, in that order: 3 + 2k channels. At a study's ends the nearest slice stands in for
the missing ones (the end slice repeats). The classifier keeps its three channels.

Rows must be one study's slices in slice order (``with_context``), or several studies each in
slice order, given by a per-row study id whose rows are contiguous (``grouped_context``) — as
``ArrayDataset`` (sorted by patient and slice) and scoring's studies are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLAIR = 1
MAX_CONTEXT = 3


def segmenter_channels(context: int) -> int:
    """Channels of the segmenter's input for ``context`` neighbours on each side."""
    return 3 + 2 * _check(context)


def _check(context: int) -> int:
    if not isinstance(context, (int, np.integer)) or not 0 <= int(context) <= MAX_CONTEXT:
        raise ValueError(f"context must be an int within 0..{MAX_CONTEXT}, received {context!r}")
    return int(context)


def with_context(images: np.ndarray, context: int) -> np.ndarray:
    """One study's slices (n x S x S x 3, slice order) -> n x S x S x (3 + 2k): each slice's
    channels, then the FLAIR of slices i-k..i-1 and i+1..i+k (clamped at the study's ends)."""
    context = _check(context)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be n x S x S x 3, received shape {images.shape}")
    if context == 0:
        return images
    n = len(images)
    offsets = [*range(-context, 0), *range(1, context + 1)]
    rows = np.clip(np.arange(n)[:, None] + np.asarray(offsets)[None, :], 0, n - 1)
    neighbours = np.moveaxis(images[rows, ..., FLAIR], 1, -1)  # n x S x S x 2k
    return np.concatenate([images, neighbours.astype(images.dtype)], axis=-1)


def grouped_context(images: np.ndarray, study_ids: np.ndarray, context: int) -> np.ndarray:
    """``with_context`` for rows of several studies, each study's rows contiguous and in slice
    order; a study id that comes back after another study is an error."""
    context = _check(context)
    study_ids = np.asarray(study_ids)
    if len(study_ids) != len(images):
        raise ValueError(f"{len(study_ids)} study ids for {len(images)} slices")
    if context == 0 or len(images) == 0:
        return np.asarray(images)
    starts = np.flatnonzero(np.r_[True, study_ids[1:] != study_ids[:-1]])
    if len(starts) != len(np.unique(study_ids)):
        raise ValueError("a study's slices must be contiguous: the study ids come back after "
                         "another study's")
    bounds = [*starts.tolist(), len(images)]
    return np.concatenate([with_context(images[a:b], context)
                           for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def record_context(record: dict[str, Any]) -> int:
    """The ``seg_context`` a model version was trained with (model.json; 0 when absent)."""
    return _check(int(record.get("seg_context") or 0))
