"""NIfTI studies in: one ``.nii`` / ``.nii.gz`` file per sequence read into a ``Volume``.

A file's description (what the series rules match) is its file name. NIfTI voxel coordinates
run ``(i, j, k)`` and its affine maps them to RAS millimetres; a ``Volume`` holds ``voxels[k, j,
i]`` (slice, row, column) and an affine to LPS, so the affine's first two rows change sign. The
header's scaling (``scl_slope``, ``scl_inter``) is applied; its free-text fields (``descrip``,
``aux_file``, ``intent_name``) are never read, as they may hold identifying text.

Reasons a study is rejected (``StudyRejected``): ``unreadable`` (not a NIfTI file, or its data
cut short), ``not_3d`` (a 4D series or a 2D image), ``too_many_slices`` / ``too_large`` (over
the study's limits, by the headers, before any voxel is read).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from brain_tumor.scoring.clinical.volume import Volume
from brain_tumor.scoring.contracts import StudyRejected

if TYPE_CHECKING:
    from brain_tumor.scoring.readers import StudyLimits

log = logging.getLogger(__name__)

SUFFIXES = (".nii", ".nii.gz")
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_nifti_name(name: str) -> bool:
    """Whether a file name ends in .nii or .nii.gz (any case)."""
    return name.lower().endswith(SUFFIXES)


def _open(path: Path) -> object:
    """The nibabel image of a file (header read, no voxels); StudyRejected if unreadable."""
    import nibabel as nib

    try:
        return nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError,
            zlib.error) as exc:
        raise StudyRejected("unreadable", f"{path.name}: not a readable NIfTI file ({exc})",
                            [str(path)]) from None


def _shape(path: Path, img: object) -> tuple[int, int, int]:
    """The file's 3D shape (i, j, k); a trailing axis of 1 is dropped; else ``not_3d``."""
    shape = tuple(int(n) for n in img.shape)  # type: ignore[attr-defined]
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3 or min(shape) < 1:
        kind = f"{len(shape)}D" if len(shape) != 3 else "empty"
        raise StudyRejected("not_3d", f"{path.name}: a {kind} image of shape {shape}, expected "
                                      f"one 3D volume per file", [str(path)])
    return shape  # type: ignore[return-value]


def _check_limits(path: Path, shape: tuple[int, int, int], limits: StudyLimits) -> None:
    """StudyRejected when one volume is over the study's slice or pixel limits."""
    i, j, k = shape
    if k > limits.study_slices:
        raise StudyRejected("too_many_slices", (
            f"{path.name}: {k} slices, the most accepted is {limits.study_slices} "
            f"(max_study_slices)"), [str(path)])
    if i * j > limits.slice_pixels:
        raise StudyRejected("too_large", (
            f"{path.name}: slices of {i}x{j} pixels, over the limit of {limits.slice_pixels:,} "
            f"(max_slice_pixels)"), [str(path)])


def read_nifti_file(path: Path, limits: StudyLimits) -> Volume:
    """One NIfTI file as a Volume (LPS affine, Z x H x W voxels)."""
    img = _open(path)
    shape = _shape(path, img)
    _check_limits(path, shape, limits)
    try:
        data = np.asanyarray(img.dataobj)  # type: ignore[attr-defined]
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise StudyRejected("unreadable", f"{path.name}: voxel data cut short or corrupt ({exc})",
                            [str(path)]) from None
    data = np.asarray(data).reshape(shape)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise StudyRejected("unreadable", f"{path.name}: voxels of type {data.dtype}, expected "
                                          f"integers or floats", [str(path)])
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    affine = RAS_TO_LPS @ np.asarray(img.affine, np.float64)  # type: ignore[attr-defined]
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise StudyRejected("unreadable", f"{path.name}: the header's affine is singular",
                            [str(path)])
    zooms = img.header.get_zooms()  # type: ignore[attr-defined]
    thickness = float(zooms[2]) if len(zooms) > 2 and zooms[2] > 0 else None
    voxels = np.ascontiguousarray(data.transpose(2, 1, 0))
    return Volume(voxels, affine, path.name, [f"{path}#{k}" for k in range(shape[2])],
                  slice_thickness=thickness, meta={"format": "nifti"})


def read_nifti_files(paths: list[Path], limits: StudyLimits) -> list[Volume]:
    """Every file as one Volume, within ``limits`` (the volumes' voxels together at most
    ``study_pixels``, checked from the headers before any voxel is read)."""
    headers = []
    for path in sorted(Path(p) for p in paths):
        img = _open(path)
        shape = _shape(path, img)
        _check_limits(path, shape, limits)
        headers.append((path, int(np.prod(shape))))
    total = sum(n for _, n in headers)
    if total > limits.study_pixels:
        raise StudyRejected("too_large", (
            f"the {len(headers)} NIfTI volumes hold {total:,} voxels by their headers, over the "
            f"limit of {limits.study_pixels:,} (max_study_pixels)"), [str(p) for p, _ in headers])
    volumes = [read_nifti_file(path, limits) for path, _ in headers]
    log.info("read %d NIfTI volume(s)", len(volumes))
    return volumes
