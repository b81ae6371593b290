"""Predicted masks in physical units: millilitres and millimetres, where the study's spacing is
known (DICOM and NIfTI studies; a TIFF study has none, and every value is None).

A clinical study's slices are the source grid resized and cropped to the model grid
(``clinical.intensity.GridTransform`` in ``Study.meta["transform"]``); each mask is mapped back
onto the source grid first, so areas and volumes count source voxels: tumor volume = source
voxels x row spacing x column spacing x spacing between slices (gaps between slices count, as
the slices sample the volume).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from brain_tumor.scoring.clinical.intensity import GridTransform, to_source_grid
from brain_tumor.scoring.contracts import Study, StudyPrediction

#: per-slice columns ``slice_units`` returns, in order
SLICE_COLUMNS = ("tumor_area_mm2", "bbox_height_mm", "bbox_width_mm")


def spacing_of(study: Study) -> tuple[float, float, float] | None:
    """(between slices, between rows, between columns) in mm of the source grid, or None."""
    pixel = study.meta.get("pixel_spacing_mm")
    between = study.meta.get("slice_spacing_mm")
    if not pixel or between is None:
        return None
    return float(between), float(pixel[0]), float(pixel[1])


def source_masks(study: Study, pred: StudyPrediction) -> list[np.ndarray]:
    """Each slice's mask on the source grid (the masks themselves without a transform)."""
    data = study.meta.get("transform")
    if not data:
        return [np.asarray(m, bool) for m in pred.masks]
    transform = GridTransform.from_dict(data)
    return [to_source_grid(m, transform) for m in pred.masks]


def _extent(mask: np.ndarray) -> tuple[int, int] | None:
    """(rows, columns) of a mask's bounding box, None when empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def physical_units(study: Study,
                   pred: StudyPrediction) -> tuple[dict[str, Any], dict[str, list[float | None]]]:
    """(summary fields, per-slice columns) in physical units.

    Summary: ``tumor_volume_ml`` and ``tumor_extent_mm`` ([along slices, rows, columns] of
    the box around every tumor voxel; None without tumor). Columns (``SLICE_COLUMNS``): each
    slice's tumor area in mm² and its box's height and width in mm (None where there is no
    tumor). Every value is None when the spacing is unknown.
    """
    n = len(pred.masks)
    spacing = spacing_of(study)
    if spacing is None:
        return ({"tumor_volume_ml": None, "tumor_extent_mm": None},
                {c: [None] * n for c in SLICE_COLUMNS})
    between, row, col = spacing
    masks = source_masks(study, pred)
    counts = [int(np.count_nonzero(m)) for m in masks]
    extents = [_extent(m) for m in masks]
    columns: dict[str, list[float | None]] = {
        "tumor_area_mm2": [round(c * row * col, 4) if c else None for c in counts],
        "bbox_height_mm": [round(e[0] * row, 4) if e else None for e in extents],
        "bbox_width_mm": [round(e[1] * col, 4) if e else None for e in extents],
    }
    tumor = [i for i, c in enumerate(counts) if c]
    extent = None
    if tumor:
        union = np.logical_or.reduce([masks[i] for i in tumor])
        rows_cols = _extent(union)
        extent = [round((tumor[-1] - tumor[0] + 1) * between, 4),
                  round(rows_cols[0] * row, 4), round(rows_cols[1] * col, 4)]  # type: ignore[index]
    volume = round(sum(counts) * between * row * col / 1000.0, 6)
    return {"tumor_volume_ml": volume, "tumor_extent_mm": extent}, columns
