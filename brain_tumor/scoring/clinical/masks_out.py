"""A study's final tumor mask on the grid it was acquired on: as a DICOM Segmentation (SEG) of
the FLAIR series, or as a NIfTI mask beside the FLAIR volume.

**Grid.** The model's slices are the FLAIR volume brought to axial (``channels.to_axial``:
axes permuted and flipped), its pixels made square (``channels.square_pixels``) and each slice
resized and cropped to the model grid (``intensity.GridTransform``). ``acquired_masks`` undoes
all three: each slice's mask goes back onto the axial grid (``units.source_masks``), then every
voxel of the acquired grid takes the value of the nearest axial-grid voxel through the two
affines (``to_acquired_grid``); where no reformat happened the masks are taken as they are.

**DICOM SEG.** ``build_segmentation`` makes one BINARY segmentation (highdicom) of one segment,
"Tumor", whose frames reference the FLAIR instances they lie on (same Frame of Reference);
frames without tumor are left out. The algorithm identification names the model version and
says the result is for research use, not for diagnosis; so does the series description
(at most 64 characters). highdicom copies the patient and study modules from the FLAIR
headers, as the standard requires; nothing else identifying is added (the acquisition equipment
highdicom lists as contributing equipment keeps its manufacturer and model, not its site).
Series and SOP Instance UIDs derive from the model version and the FLAIR's study and series UIDs
(``seg_uids``), so scoring a study again writes the same object, and an archive keeps one copy.

**NIfTI mask.** ``nifti_mask_bytes``: uint8 0/1 voxels on the FLAIR file's own voxel grid
(``(i, j, k)`` order) with its RAS affine, gzip-compressed (``mask.nii.gz``).
"""

from __future__ import annotations

import gzip
import io
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from brain_tumor.scoring.clinical.nifti import RAS_TO_LPS
from brain_tumor.scoring.contracts import Study, StudyPrediction
from brain_tumor.scoring.units import source_masks

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

RESEARCH_USE = "research use, not for diagnosis"
ALGORITHM_NAME = f"brain-tumor detector - {RESEARCH_USE}"
MANUFACTURER = "brain-tumor"
SEGMENT_LABEL = "Tumor"
SEG_SERIES_NUMBER = 990  # the SEG's Series Number
MAX_LO = 64  # characters of a DICOM LO (Long String) value
SAME_GRID_MM = 1e-3  # affines this close (millimetres) are one grid
#: attributes of the source's acquisition equipment that name its site or its people
SITE_KEYWORDS = ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
                 "InstitutionalDepartmentTypeCodeSequence", "StationName", "DeviceSerialNumber",
                 "OperatorsName", "OperatorIdentificationSequence")


def to_acquired_grid(masks: np.ndarray, grid_affine: np.ndarray, acquired_affine: np.ndarray,
                     acquired_shape: tuple[int, int, int]) -> np.ndarray:
    """Z x H x W masks on the grid of grid_affine as a boolean volume of acquired_shape on the
    grid of acquired_affine (nearest neighbour; False outside the masks' grid).

    Affines map (column, row, slice, 1) to patient millimetres (``volume.Volume``); the masks
    come back unchanged when the two grids are one.
    """
    volume = np.asarray(masks).astype(bool)
    grid, acquired = np.asarray(grid_affine, float), np.asarray(acquired_affine, float)
    if volume.ndim != 3:
        raise ValueError(f"masks must be Z x H x W, received shape {volume.shape}")
    if grid.shape != (4, 4) or acquired.shape != (4, 4):
        raise ValueError(f"affines must be 4 x 4, received {grid.shape} and {acquired.shape}")
    shape = tuple(int(n) for n in acquired_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"acquired_shape must be (Z, H, W), received {acquired_shape!r}")
    if volume.shape == shape and np.allclose(grid, acquired, atol=SAME_GRID_MM):
        return volume.copy()
    to_grid = np.linalg.inv(grid) @ acquired
    z, h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    limits = volume.shape[::-1]  # columns, rows, slices
    out = np.zeros(shape, bool)
    for k in range(z):
        index = np.rint(to_grid[:3, 0, None, None] * cols + to_grid[:3, 1, None, None] * rows
                        + to_grid[:3, 2, None, None] * k
                        + to_grid[:3, 3, None, None]).astype(np.int64)
        inside = np.all([(index[i] >= 0) & (index[i] < limits[i]) for i in range(3)], axis=0)
        out[k][inside] = volume[index[2][inside], index[1][inside], index[0][inside]]
    return out


def acquired_masks(study: Study, pred: StudyPrediction) -> np.ndarray:
    """The study's final masks as one boolean volume on the FLAIR's acquired grid (Z x H x W,
    slices in the order the reader stacked them)."""
    meta = study.meta
    missing = [k for k in ("affine", "acquired_affine", "acquired_shape") if k not in meta]
    if missing:
        raise ValueError(f"study {study.study_id}: no acquired grid in its meta (missing "
                         f"{missing}); received keys {sorted(meta)}")
    on_axial = np.stack(source_masks(study, pred))
    return to_acquired_grid(on_axial, np.asarray(meta["affine"]),
                            np.asarray(meta["acquired_affine"]), tuple(meta["acquired_shape"]))


def _lo(text: str) -> str:
    """text cut to a DICOM LO value (64 characters), '...' marking a cut."""
    return text if len(text) <= MAX_LO else text[:MAX_LO - 3] + "..."


def series_description(model_version: str) -> str:
    """The SEG's Series Description: "Tumor mask <model version> - research use, not for
    diagnosis", the version shortened so that the whole stays within 64 characters."""
    head, tail = "Tumor mask ", f" - {RESEARCH_USE}"
    room = MAX_LO - len(head) - len(tail)
    version = model_version if len(model_version) <= room else model_version[:room - 3] + "..."
    return f"{head}{version}{tail}"


def seg_uids(model_version: str, study_uid: str, series_uid: str) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) of the SEG of one FLAIR series by one model
    version: the same inputs give the same UIDs."""
    from pydicom.uid import generate_uid

    sources = [model_version, study_uid, series_uid]
    return (generate_uid(entropy_srcs=["brain-tumor seg series", *sources]),
            generate_uid(entropy_srcs=["brain-tumor seg instance", *sources]))


def _without_site(seg: Dataset) -> None:
    """Drop what names the scanner's site from the contributing equipment highdicom lists."""
    for item in seg.get("ContributingEquipmentSequence", []):
        for keyword in SITE_KEYWORDS:
            if keyword in item:
                delattr(item, keyword)


def _fixed_dimension_uid(seg: Dataset, uid: str) -> None:
    """Replace highdicom's random Dimension Organization UID by uid, everywhere it occurs."""
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in seg.get("DimensionIndexSequence", []):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = uid


def build_segmentation(headers: list[Dataset], mask: np.ndarray,
                       model_version: str) -> Dataset | None:
    """The DICOM SEG of a Z x H x W mask over the FLAIR instances (headers, frame k = mask[k]);
    None when the mask holds no tumor voxel (no empty segmentation is written)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    volume = np.asarray(mask).astype(bool)
    if volume.ndim != 3 or volume.shape[0] != len(headers):
        raise ValueError(f"mask must be one frame per FLAIR instance ({len(headers)}), received "
                         f"shape {volume.shape}")
    first = headers[0]
    if not str(first.get("FrameOfReferenceUID", "")):
        raise ValueError("the FLAIR instances have no Frame of Reference UID; received "
                         f"series {first.get('SeriesInstanceUID', '')!s}")
    if not volume.any():
        return None
    study_uid, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    seg_series, seg_instance = seg_uids(model_version, study_uid, series_uid)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence,
        version=_lo(model_version), source=MANUFACTURER,
        parameters={"intended_use": RESEARCH_USE})
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    seg = hd.seg.Segmentation(
        source_images=headers, pixel_array=volume.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=seg_series,
        series_number=SEG_SERIES_NUMBER, sop_instance_uid=seg_instance, instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=_lo(ALGORITHM_NAME),
        software_versions=_lo(model_version), device_serial_number=_lo(model_version),
        content_label="TUMOR", content_description=_lo(f"Tumor mask - {RESEARCH_USE}"),
        series_description=series_description(model_version))
    _without_site(seg)
    _fixed_dimension_uid(seg, generate_uid(entropy_srcs=["brain-tumor seg dimensions",
                                                          model_version, study_uid, series_uid]))
    log.info("DICOM SEG of %d frame(s) over %d FLAIR instance(s)", int(seg.NumberOfFrames),
             len(headers))
    return seg


def dicom_bytes(ds: Dataset) -> bytes:
    """A DICOM dataset as the bytes of a Part 10 file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def nifti_mask_bytes(mask: np.ndarray, lps_affine: np.ndarray) -> bytes:
    """A Z x H x W mask (``voxels[k, j, i]``, LPS affine as ``volume.Volume`` holds them) as a
    gzip-compressed NIfTI-1 file: uint8 0/1 voxels in (i, j, k) order, RAS affine."""
    import nibabel as nib

    volume = np.asarray(mask)
    if volume.ndim != 3:
        raise ValueError(f"mask must be Z x H x W, received shape {volume.shape}")
    data = np.ascontiguousarray(volume.astype(bool).astype(np.uint8).transpose(2, 1, 0))
    affine = RAS_TO_LPS @ np.asarray(lps_affine, np.float64)  # the flip is its own inverse
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(np.uint8)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    raw = img.to_bytes()
    return gzip.compress(raw, mtime=0)


def acquired_grid_meta(flair_affine: np.ndarray, flair_shape: tuple[int, ...]) -> dict[str, Any]:
    """``Study.meta`` entries of the FLAIR's acquired grid (before any reformat)."""
    return {"acquired_affine": [[float(v) for v in r] for r in np.asarray(flair_affine)],
            "acquired_shape": [int(n) for n in flair_shape]}
