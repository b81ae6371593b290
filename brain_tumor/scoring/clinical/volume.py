"""One MR sequence as a stack of slices in patient space: what a clinical reader yields.

Every clinical reader (DICOM, NIfTI) turns each sequence it finds into a ``Volume``;
``brain_tumor.scoring.clinical.channels`` then picks the sequences the model takes, brings them
onto the FLAIR grid, maps their intensities the way the training data was made and stacks them
in the model's channel order.

Coordinates are DICOM patient coordinates (LPS, millimetres). ``affine`` maps a voxel index
``(column, row, slice, 1)`` to ``(x, y, z, 1)`` in that space, so voxel ``voxels[k, i, j]`` sits
at ``affine @ (j, i, k, 1)``. Slices are ordered along the slice normal (ascending position).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    """One sequence: raw scanner values on a regular grid, with where each slice came from."""

    voxels: np.ndarray  # Z x H x W raw values (any integer or float dtype), Z along the normal
    affine: np.ndarray  # 4 x 4: (column, row, slice, 1) -> patient LPS millimetres
    description: str  # series description / protocol name / file name: what the rules match
    sources: list[str]  # Z entries: the instance (SOP Instance UID) or file each slice came from
    series_uid: str | None = None  # Series Instance UID (DICOM) or None
    frame_of_reference: str | None = None  # Frame of Reference UID (DICOM) or None
    slice_thickness: float | None = None  # mm, as the header states (None when unknown)
    # format-specific; only a DICOM volume's "headers" identify the patient (for its SEG)
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.voxels.ndim != 3 or min(self.voxels.shape) < 1:
            raise ValueError(f"voxels must be Z x H x W, received shape {self.voxels.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4 x 4, received shape {self.affine.shape}")
        if len(self.sources) != self.voxels.shape[0]:
            raise ValueError(f"one source per slice: {self.voxels.shape[0]} slices, received "
                             f"{len(self.sources)} sources")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(between slices, between rows, between columns) in millimetres."""
        cols, rows, slices = (float(np.linalg.norm(self.affine[:3, i])) for i in range(3))
        return slices, rows, cols

    @property
    def normal(self) -> np.ndarray:
        """Unit vector along which slice index grows (patient coordinates)."""
        axis = self.affine[:3, 2]
        return axis / np.linalg.norm(axis)
