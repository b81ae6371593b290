"""brain_tumor.scoring.clinical.nifti and devtools.synth_nifti: files to Volumes in LPS."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.devtools.synth_nifti import NiftiSpec, lps_affine, tiff_volume, write_nifti_study
from brain_tumor.scoring.clinical.channels import SeriesRules, assemble_study, to_axial
from brain_tumor.scoring.clinical.nifti import read_nifti_files
from brain_tumor.scoring.contracts import StudyRejected
from brain_tumor.scoring.readers import StudyLimits, has_dicom_magic, study_format

LIMITS = StudyLimits(file_bytes=32 << 20, slice_pixels=2048 * 2048, study_slices=512,
                     study_pixels=128 << 20)


@pytest.fixture(scope="module")
def tiff_study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiff")
    [folder] = make_studies(root, SynthSpec(patients=1, slices=5, size=32, seed=2,
                                            tumor_free_patients=0))
    return folder


@pytest.mark.parametrize("axcodes", [None, ("R", "A", "S"), ("A", "S", "R"), ("S", "L", "P")])
def test_any_storage_orientation_reads_back_as_the_axial_slices(tiff_study, tmp_path, axcodes):
    spec = NiftiSpec(axcodes=axcodes)
    paths = write_nifti_study(tiff_study, tmp_path, spec)
    assert sorted(p.name for p in paths) == ["FLAIR.nii.gz", "T1_post_gd.nii.gz",
                                             "T1_pre.nii.gz"]
    assert nib.load(str(paths[0])).get_data_dtype() == np.int16
    volumes = read_nifti_files(paths, LIMITS)
    flair = next(v for v in volumes if v.description == "FLAIR.nii.gz")
    assert flair.meta == {"format": "nifti"} and len(flair.sources) == flair.voxels.shape[0]
    axial = to_axial(flair)
    expected = tiff_volume(tiff_study)[..., 1].astype(np.int16) * 16
    assert np.array_equal(axial.voxels, expected)
    assert np.allclose(axial.affine, lps_affine(spec), atol=1e-4)
    assert axial.spacing == pytest.approx((3.3, 0.9, 0.8), abs=1e-5)


def test_sources_name_the_file_and_its_slice(tiff_study, tmp_path):
    paths = write_nifti_study(tiff_study, tmp_path)
    study = assemble_study("s1", read_nifti_files(paths, LIMITS), SeriesRules())
    assert study.source == [f"{tmp_path / 'FLAIR.nii.gz'}#{k}" for k in range(5)]
    assert study.summary["format"] == "nifti" and not study.summary["reduced_sequences"]
    assert study.meta["pixel_spacing_mm"] == [0.8, 0.8]  # rows resampled to square pixels
    assert study.meta["source_shape"] == [5, 35, 32]  # 31 x 0.9 mm of rows at 0.8 mm


def test_a_missing_sequence_is_filled(tiff_study, tmp_path):
    paths = write_nifti_study(tiff_study, tmp_path, NiftiSpec(sequences=("flair", "t1_post")))
    study = assemble_study("s1", read_nifti_files(paths, LIMITS), SeriesRules())
    assert study.summary["filled_channels"] == ["t1_pre"]


def test_a_truncated_file_is_unreadable(tiff_study, tmp_path):
    [path] = write_nifti_study(tiff_study, tmp_path, NiftiSpec(sequences=("flair",)))
    raw = tmp_path / "FLAIR.nii"
    nib.save(nib.load(str(path)), str(raw))
    for broken in (path, raw):
        data = broken.read_bytes()
        broken.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(StudyRejected) as exc:
            read_nifti_files([broken], LIMITS)
        assert exc.value.reason == "unreadable" and exc.value.files == [str(broken)]


def test_not_a_nifti_file_is_unreadable(tmp_path):
    path = tmp_path / "FLAIR.nii.gz"
    path.write_bytes(b"not a volume at all" * 30)
    with pytest.raises(StudyRejected) as exc:
        read_nifti_files([path], LIMITS)
    assert exc.value.reason == "unreadable" and "FLAIR.nii.gz" in exc.value.detail


def test_a_4d_series_is_refused(tmp_path):
    path = tmp_path / "fmri_flair.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.int16), np.eye(4)), str(path))
    with pytest.raises(StudyRejected) as exc:
        read_nifti_files([path], LIMITS)
    assert exc.value.reason == "not_3d" and "4D" in exc.value.detail
    single = tmp_path / "one_flair.nii.gz"  # a 4D file of one volume is a 3D volume
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4, 1), np.int16), np.eye(4)), str(single))
    assert read_nifti_files([single], LIMITS)[0].voxels.shape == (4, 8, 8)


def test_limits_are_checked_from_the_headers(tiff_study, tmp_path):
    paths = write_nifti_study(tiff_study, tmp_path)
    few = StudyLimits(LIMITS.file_bytes, LIMITS.slice_pixels, 4, LIMITS.study_pixels)
    with pytest.raises(StudyRejected) as exc:
        read_nifti_files(paths, few)
    assert exc.value.reason == "too_many_slices"
    small = StudyLimits(LIMITS.file_bytes, LIMITS.slice_pixels, 512, 2 * 32 * 32 * 5)
    with pytest.raises(StudyRejected) as exc:
        read_nifti_files(paths, small)
    assert exc.value.reason == "too_large" and "by their headers" in exc.value.detail


def test_a_study_format_is_told_by_its_file_names_and_the_dicom_marker():
    assert study_format(["a_1.tif", "FLAIR.nii.gz", "x.dcm"]) == "tiff"
    assert study_format(["notes.txt", "FLAIR.NII.GZ", "T1.nii"]) == "nifti"
    assert study_format(["series/IM0001.dcm"]) == study_format(["study.zip"]) == "dicom"
    assert study_format(["IM0001", "IM0002"]) is None
    assert has_dicom_magic(b"\0" * 128 + b"DICM" + b"\2\0")
    assert not has_dicom_magic(b"\0" * 128 + b"II*\0") and not has_dicom_magic(b"DICM")
