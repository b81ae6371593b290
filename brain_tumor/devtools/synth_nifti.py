"""Synthetic NIfTI studies: a synthetic TIFF study (``brain_tumor.devtools.synth``) written as one
``.nii.gz`` volume per sequence.

Each TIFF slice holds the three sequences in the ``kaggle_3m`` channel order (pre-contrast T1,
FLAIR, post-contrast T1); each sequence becomes one 16-bit (int16) volume, named so that the
default series rules find it (``T1_pre.nii.gz``, ``FLAIR.nii.gz``, ``T1_post_gd.nii.gz``), with
stored value ``SCALE * v`` for an 8-bit value ``v``. The slices are axial, the first slice
lowest, at ``spacing`` millimetres from each other, with ``pixel_spacing`` (between rows,
between columns); image columns run toward the patient's left and rows toward posterior, as in
axial DICOM. ``axcodes`` stores the voxels in another orientation (e.g. ``("R", "A", "S")``, the
canonical RAS+ of many research tools, or ``("A", "S", "R")``, sagittal slices); the affine
follows, so the volume in patient space is the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from brain_tumor.ingest.imaging import decode_image
from brain_tumor.scoring.readers import is_slice_name

log = logging.getLogger(__name__)

SCALE = 16  # stored value per 8-bit unit: a 12-bit range
#: sequence -> (channel of the TIFF slices, file name)
SEQUENCES = {"t1_pre": (0, "T1_pre.nii.gz"), "flair": (1, "FLAIR.nii.gz"),
             "t1_post": (2, "T1_post_gd.nii.gz")}


@dataclass(frozen=True)
class NiftiSpec:
    """Geometry, storage orientation and which sequences to write."""

    pixel_spacing: tuple[float, float] = (0.9, 0.8)  # between rows, between columns (mm)
    spacing: float = 3.3  # between slices (mm)
    origin: tuple[float, float, float] = (-120.0, -110.0, 40.0)  # LPS mm of the first voxel
    axcodes: tuple[str, str, str] | None = None  # storage orientation; None: L, P, S
    sequences: tuple[str, ...] = ("t1_pre", "flair", "t1_post")


def tiff_volume(folder: Path) -> np.ndarray:
    """Z x H x W x 3 uint8: the slices of a TIFF study folder by slice number."""
    files = [p for p in Path(folder).iterdir() if is_slice_name(p.name)]
    if not files:
        raise ValueError(f"no slice TIFFs (<name>_<N>.tif) in {folder}")
    files.sort(key=lambda p: int(p.name.rsplit("_", 1)[1].split(".")[0]))
    return np.stack([decode_image(p.read_bytes()) for p in files])


def lps_affine(spec: NiftiSpec) -> np.ndarray:
    """(column, row, slice, 1) -> LPS millimetres of the axial volume spec describes."""
    rows, cols = spec.pixel_spacing
    affine = np.diag([cols, rows, spec.spacing, 1.0])
    affine[:3, 3] = spec.origin
    return affine


def nifti_image(values: np.ndarray, spec: NiftiSpec) -> nib.Nifti1Image:
    """One sequence (Z x H x W) as a NIfTI image in spec's storage orientation."""
    data = np.ascontiguousarray(values.transpose(2, 1, 0))  # (column, row, slice)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_affine(spec)  # NIfTI speaks RAS
    img = nib.Nifti1Image(data, affine)
    if spec.axcodes is not None:
        current = nib.orientations.io_orientation(affine)
        wanted = nib.orientations.axcodes2ornt(spec.axcodes)
        img = img.as_reoriented(nib.orientations.ornt_transform(current, wanted))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def write_nifti_study(folder: Path, out: Path, spec: NiftiSpec | None = None) -> list[Path]:
    """Write the TIFF study in folder as NIfTI volumes under out; returns their paths."""
    spec = spec or NiftiSpec()
    unknown = [s for s in spec.sequences if s not in SEQUENCES]
    if unknown:
        raise ValueError(f"sequences must be among {list(SEQUENCES)}, received {unknown}")
    slices = tiff_volume(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in spec.sequences:
        channel, file_name = SEQUENCES[name]
        values = slices[..., channel].astype(np.int16) * np.int16(SCALE)
        path = out / file_name
        nib.save(nifti_image(values, spec), str(path))
        paths.append(path)
    log.info("wrote %d NIfTI volume(s) of %d slices to %s", len(paths), len(slices), out)
    return paths
