"""brain_tumor.scoring.clinical.masks_out: masks back onto the acquired grid, the DICOM SEG of a
FLAIR series (read back with pydicom and highdicom), the NIfTI mask."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import SegmentationStorage
from support import assert_frames_on_sources

from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.devtools.synth_dicom import DicomSpec, tiff_slices, write_series
from brain_tumor.scoring.clinical.channels import (
    SeriesRules,
    assemble_study,
    square_pixels,
    to_axial,
)
from brain_tumor.scoring.clinical.dicom import read_dicom_files
from brain_tumor.scoring.clinical.masks_out import (
    MAX_LO,
    RESEARCH_USE,
    acquired_masks,
    build_segmentation,
    dicom_bytes,
    nifti_mask_bytes,
    series_description,
    to_acquired_grid,
)
from brain_tumor.scoring.clinical.nifti import RAS_TO_LPS
from brain_tumor.scoring.clinical.volume import Volume
from brain_tumor.scoring.contracts import StudyPrediction, StudyRejected
from brain_tumor.scoring.readers import StudyLimits

LIMITS = StudyLimits(file_bytes=2**20, slice_pixels=512 * 512, study_slices=64,
                     study_pixels=2**22)
SLICES = 5


def _box(shape: tuple[int, int, int], lo: tuple[int, int, int],
         hi: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return mask


def _volume(values: np.ndarray, affine: np.ndarray, description: str = "FLAIR") -> Volume:
    return Volume(values.astype(np.float32), affine, description,
                  [f"{description}#{k}" for k in range(values.shape[0])])


def _round_trip(acquired: Volume) -> np.ndarray:
    """The acquired volume's mask through the reader's reformat and mapped back."""
    scored = square_pixels(to_axial(acquired))
    return to_acquired_grid(scored.voxels >= 0.5, scored.affine, acquired.affine,
                            acquired.voxels.shape)


def test_the_same_grid_gives_the_masks_back_unchanged():
    box = _box((4, 10, 12), (1, 2, 3), (3, 7, 9))
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    back = to_acquired_grid(box, affine, affine, box.shape)
    assert back.dtype == bool and np.array_equal(back, box) and back is not box


def test_a_reoriented_volume_comes_back_where_it_was():
    # sagittal slices along +x, rows from superior to inferior, columns toward anterior
    affine = np.array([[0.0, 0.0, 2.0, -20.0], [-0.9, 0.0, 0.0, 40.0],
                       [0.0, -1.1, 0.0, 60.0], [0.0, 0.0, 0.0, 1.0]])
    box = _box((12, 24, 28), (3, 5, 7), (8, 15, 20))
    acquired = _volume(box, affine)
    axial = to_axial(acquired)
    assert axial.voxels.shape != box.shape  # the reformat moved the axes
    back = _round_trip(acquired)
    assert np.array_equal(back, box)


@pytest.mark.parametrize("spacing", [(0.9, 0.8), (0.5, 1.0)], ids=["rows", "columns"])
def test_a_non_square_volume_comes_back_where_it_was(spacing: tuple[float, float]):
    row, col = spacing
    affine = np.diag([col, row, 3.3, 1.0])
    affine[:3, 3] = (-12.0, -10.0, 40.0)
    box = _box((6, 30, 40), (2, 9, 11), (5, 20, 31))
    acquired = _volume(box, affine)
    assert square_pixels(acquired).voxels.shape != box.shape  # resampled
    assert np.array_equal(_round_trip(acquired), box)


def test_a_reoriented_non_square_volume_comes_back_where_it_was():
    # coronal, rows inferior to superior (flipped), 1.2 mm rows and 0.7 mm columns
    affine = np.array([[-0.7, 0.0, 0.0, 30.0], [0.0, 0.0, 2.5, -40.0],
                       [0.0, -1.2, 0.0, 50.0], [0.0, 0.0, 0.0, 1.0]])
    box = _box((8, 20, 26), (2, 4, 6), (6, 12, 19))
    assert np.array_equal(_round_trip(_volume(box, affine)), box)


def test_masks_out_of_the_scored_grid_are_empty():
    box = np.ones((2, 4, 4), bool)
    shifted = np.diag([1.0, 1.0, 1.0, 1.0])
    shifted[:3, 3] = (100.0, 0.0, 0.0)
    assert not to_acquired_grid(box, np.eye(4), shifted, (2, 4, 4)).any()
    with pytest.raises(ValueError, match="Z x H x W"):
        to_acquired_grid(box[0], np.eye(4), np.eye(4), (2, 4, 4))


def test_a_studys_masks_come_back_on_the_flair_as_acquired():
    # 256 x 256 slices (no resize to the model grid), stored with rows and slices flipped
    affine = np.diag([0.9, -0.9, -3.0, 1.0])
    affine[:3, 3] = (-115.0, 115.0, 60.0)
    z, size = 4, 256
    yy, xx = np.mgrid[0:size, 0:size]
    head = np.where(np.hypot(yy - 128, xx - 128) < 110, 240.0, 0.0)
    head[np.hypot(yy - 128, xx - 128) < 100] = 800.0
    head[np.hypot(yy - 100, xx - 150) < 20] = 1600.0
    flair = _volume(np.repeat(head[None], z, axis=0), affine, "AX FLAIR")
    flair.meta["format"] = "nifti"
    study = assemble_study("s1", [flair], SeriesRules())
    assert study.meta["acquired_shape"] == [z, size, size]
    box = _box((z, size, size), (1, 40, 60), (3, 90, 120))
    on_model = to_axial(_volume(box, affine)).voxels > 0
    pred = StudyPrediction(prob=np.zeros(z), label=np.zeros(z, int), masks=list(on_model),
                           geometry=[])
    assert np.array_equal(acquired_masks(study, pred), box)


def test_a_dicom_flair_without_frame_of_reference_is_rejected():
    flair = _volume(np.full((3, 16, 16), 500.0), np.diag([1.0, 1.0, 3.0, 1.0]), "AX FLAIR")
    flair.meta.update(format="dicom", series_number=3)
    with pytest.raises(StudyRejected) as exc:
        assemble_study("s1", [flair], SeriesRules())
    assert exc.value.reason == "no_frame_of_reference"
    assert "#3 'AX FLAIR'" in exc.value.detail


@pytest.fixture(scope="module")
def flair(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    """The FLAIR volume of a synthetic DICOM study, read by the DICOM reader (files gone)."""
    root = tmp_path_factory.mktemp("seg")
    folder = make_studies(root / "tiff", SynthSpec(patients=1, slices=SLICES, size=32, seed=5,
                                                   tumor_free_patients=0))[0]
    write_series(tiff_slices(folder), root / "dcm", DicomSpec(pixel_spacing=(0.9, 0.8)))
    volumes = read_dicom_files(sorted((root / "dcm").rglob("*.dcm")), LIMITS)
    for path in (root / "dcm").rglob("*.dcm"):
        path.unlink()  # the headers must hold every value they need
    return next(v for v in volumes if v.description == "AX FLAIR")


def _read(ds: pydicom.Dataset) -> hd.seg.Segmentation:
    return hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(dicom_bytes(ds))))


def test_the_flair_headers_are_kept_without_pixel_data(flair: Volume):
    headers = flair.meta["headers"]
    assert [str(h.SOPInstanceUID) for h in headers] == flair.sources
    assert all("PixelData" not in h for h in headers)


def test_the_segmentation_references_the_flair_instances(flair: Volume):
    headers = flair.meta["headers"]
    mask = _box(flair.voxels.shape, (1, 4, 10), (3, 9, 20))
    seg = _read(build_segmentation(headers, mask, "mv-2024-01"))
    assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == flair.frame_of_reference
    assert seg.StudyInstanceUID == headers[0].StudyInstanceUID
    listed = seg.ReferencedSeriesSequence[0]
    assert listed.SeriesInstanceUID == flair.series_uid
    assert [i.ReferencedSOPInstanceUID for i in listed.ReferencedInstanceSequence] == flair.sources
    assert int(seg.NumberOfFrames) == 2  # frames without tumor are left out
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=flair.sources,
                                               segment_numbers=[1])
    assert np.array_equal(pixels[..., 0].astype(bool), mask)
    assert_frames_on_sources(seg, headers)
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == "mv-2024-01"
    assert RESEARCH_USE in algorithm.AlgorithmName
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert seg.SeriesDescription == f"Tumor mask mv-2024-01 - {RESEARCH_USE}"
    # the patient and study modules are copied; equipment and the like are not
    assert seg.PatientID == headers[0].PatientID
    assert "InstitutionName" not in seg and seg.Manufacturer == "brain-tumor"
    institution = str(headers[0].InstitutionName)
    assert institution and institution not in dicom_bytes(seg).decode("latin-1")


def test_segmentation_uids_are_deterministic(flair: Volume):
    headers = flair.meta["headers"]
    mask = _box(flair.voxels.shape, (2, 4, 10), (3, 9, 20))
    first, again = (build_segmentation(headers, mask, "mv-a") for _ in range(2))
    other = build_segmentation(headers, mask, "mv-b")
    for keyword in ("SeriesInstanceUID", "SOPInstanceUID"):
        assert first[keyword].value == again[keyword].value != other[keyword].value
    assert (first.DimensionOrganizationSequence[0].DimensionOrganizationUID
            == again.DimensionOrganizationSequence[0].DimensionOrganizationUID)


def test_a_long_model_version_keeps_the_description_within_64_characters(flair: Volume):
    version = "champion-" + "x" * 100
    description = series_description(version)
    assert len(description) <= MAX_LO and description.endswith(RESEARCH_USE)
    assert description.startswith("Tumor mask champion-")
    mask = _box(flair.voxels.shape, (2, 4, 10), (3, 9, 20))
    seg = _read(build_segmentation(flair.meta["headers"], mask, version))
    assert seg.SeriesDescription == description
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert len(algorithm.AlgorithmVersion) <= MAX_LO


def test_no_tumor_gives_no_segmentation(flair: Volume):
    empty = np.zeros(flair.voxels.shape, bool)
    assert build_segmentation(flair.meta["headers"], empty, "mv-a") is None
    with pytest.raises(ValueError, match="one frame per FLAIR instance"):
        build_segmentation(flair.meta["headers"], empty[:2], "mv-a")


def test_the_nifti_mask_is_on_the_files_grid(tmp_path: Path):
    lps = np.array([[-0.8, 0.0, 0.0, 90.0], [0.0, 0.0, 2.0, -30.0],
                    [0.0, -0.9, 0.0, 70.0], [0.0, 0.0, 0.0, 1.0]])
    mask = _box((7, 20, 24), (2, 5, 6), (5, 11, 15))
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(nifti_mask_bytes(mask, lps))
    img = nib.load(str(path))
    np.testing.assert_allclose(img.affine, RAS_TO_LPS @ lps, atol=1e-5)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.uint8 and data.shape == (24, 20, 7)
    assert set(np.unique(data).tolist()) == {0, 1}
    assert np.array_equal(data.transpose(2, 1, 0).astype(bool), mask)
