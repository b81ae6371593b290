"""The DICOM reader on synthetic studies written to tmp_path: geometry, rescale, compression,
zips, ignored objects and every reason a study is rejected."""

from __future__ import annotations

import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000MCLossless

from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.devtools.synth_dicom import (
    DicomSpec,
    PatientIdentity,
    non_image_object,
    tiff_slices,
    write_series,
    zip_folder,
)
from brain_tumor.scoring.clinical.dicom import read_dicom_files
from brain_tumor.scoring.contracts import StudyRejected
from brain_tumor.scoring.readers import StudyLimits
from brain_tumor.store.ids import is_study_id, study_id_from_uid

LIMITS = StudyLimits(file_bytes=2**20, slice_pixels=512 * 512, study_slices=64,
                     study_pixels=2**22)
SLICES = 5
SPEC = DicomSpec(pixel_spacing=(0.9, 0.8), spacing=3.3, thickness=3.0,
                 origin=(-120.0, -110.0, 40.0))


@pytest.fixture(scope="module")
def tiffs(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """The slices of one synthetic TIFF study (with a tumor)."""
    root = tmp_path_factory.mktemp("tiff")
    folder = make_studies(root, SynthSpec(patients=1, slices=SLICES, size=32, seed=5,
                                          tumor_free_patients=0))[0]
    return tiff_slices(folder)


@pytest.fixture
def study(tmp_path: Path, tiffs: list[np.ndarray]) -> Path:
    """The study written as three DICOM series under tmp_path/dcm."""
    write_series(tiffs, tmp_path / "dcm", SPEC)
    return tmp_path / "dcm"


def files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm"))


def by_description(paths: list[Path], limits: StudyLimits = LIMITS) -> dict:
    return {v.description: v for v in read_dicom_files(paths, limits)}


def edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def rejected(paths: list[Path], limits: StudyLimits = LIMITS) -> StudyRejected:
    with pytest.raises(StudyRejected) as info:
        read_dicom_files(paths, limits)
    return info.value


def test_geometry_rescale_and_order(study: Path, tiffs: list[np.ndarray]) -> None:
    paths = files(study)
    random.Random(1).shuffle(paths)
    volumes = by_description(paths)
    assert sorted(volumes) == ["AX FLAIR", "AX T1 POST+C", "AX T1 PRE"]
    flair = volumes["AX FLAIR"]
    expected_affine = np.array([[0.8, 0, 0, -120], [0, 0.9, 0, -110], [0, 0, 3.3, 40],
                                [0, 0, 0, 1]])
    np.testing.assert_allclose(flair.affine, expected_affine, atol=1e-6)
    assert flair.spacing == pytest.approx((3.3, 0.9, 0.8))
    assert flair.slice_thickness == pytest.approx(3.0)
    assert flair.voxels.shape == (SLICES, 32, 32)
    for channel, name in ((0, "AX T1 PRE"), (1, "AX FLAIR"), (2, "AX T1 POST+C")):
        # stored 16 v + 64, slope 0.25, intercept -16: the rescaled value is 4 v, in slice order
        np.testing.assert_array_equal(volumes[name].voxels,
                                      4.0 * np.stack([t[..., channel] for t in tiffs]))
    uids = [pydicom.dcmread(p).SOPInstanceUID for p in files(study / "3")]
    assert flair.sources == uids
    assert len({v.frame_of_reference for v in volumes.values()}) == 1
    assert flair.frame_of_reference is not None
    assert flair.meta["ignored"] == []
    # a voxel's place: the affine maps (column, row, slice) to patient millimetres
    x, y, z, _ = flair.affine @ np.array([3, 2, 4, 1])
    assert (x, y, z) == pytest.approx((-120 + 3 * 0.8, -110 + 2 * 0.9, 40 + 4 * 3.3))


def test_slices_sorted_along_the_normal(study: Path, tiffs: list[np.ndarray]) -> None:
    for path in files(study / "3"):  # the FLAIR series written top to bottom instead
        edit(path, lambda ds: setattr(ds, "ImagePositionPatient",
                                      [*ds.ImagePositionPatient[:2],
                                       -float(ds.ImagePositionPatient[2])]))
    flair = by_description(files(study))["AX FLAIR"]
    np.testing.assert_array_equal(flair.voxels[0], 4.0 * tiffs[-1][..., 1])
    assert flair.affine[2, 3] == pytest.approx(-(40 + 4 * 3.3))
    assert flair.affine[2, 2] == pytest.approx(3.3)


def test_compressed_series(tmp_path: Path, study: Path, tiffs: list[np.ndarray]) -> None:
    write_series(tiffs, tmp_path / "rle", DicomSpec(compress=True))
    assert str(pydicom.dcmread(files(tmp_path / "rle")[0]).file_meta.TransferSyntaxUID) == \
        pydicom.uid.RLELossless
    plain, rle = by_description(files(study)), by_description(files(tmp_path / "rle"))
    for name, volume in plain.items():
        np.testing.assert_array_equal(rle[name].voxels, volume.voxels)
        assert rle[name].meta["transfer_syntax"] == "RLE Lossless"


def test_zip_input(tmp_path: Path, study: Path) -> None:
    archive = zip_folder(study, tmp_path / "study.zip")
    from_zip, plain = by_description([archive]), by_description(files(study))
    assert sorted(from_zip) == sorted(plain)
    np.testing.assert_array_equal(from_zip["AX FLAIR"].voxels, plain["AX FLAIR"].voxels)


def test_zip_member_leaving_the_folder_rejects(tmp_path: Path, study: Path) -> None:
    archive = zip_folder(study, tmp_path / "study.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("../evil.dcm", files(study)[0].read_bytes())
    assert rejected([archive]).reason == "unsafe_path"


def test_non_image_objects_are_ignored(study: Path) -> None:
    extra = study / "other"
    extra.mkdir()
    for kind in ("SR", "PR", "KO", "SEG"):
        non_image_object(SPEC, kind).save_as(extra / f"{kind}.dcm", enforce_file_format=True)
    volumes = by_description(files(study))
    assert sorted(volumes) == ["AX FLAIR", "AX T1 POST+C", "AX T1 PRE"]
    assert sorted(volumes["AX FLAIR"].meta["ignored"]) == ["KO", "PR", "SEG", "SR"]


def test_localizer_series_is_ignored(study: Path) -> None:
    local = study / "1"
    local.mkdir()
    for k, iop in enumerate(([1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 0, -1])):
        ds = pydicom.dcmread(files(study / "3")[0])
        ds.SOPInstanceUID = f"1.2.3.9.1{k}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID, ds.SeriesDescription, ds.SeriesNumber = "1.2.3.9", "LOCALIZER", 1
        ds.ImageOrientationPatient = iop
        ds.save_as(local / f"{k}.dcm")
    volumes = by_description(files(study))
    assert "LOCALIZER" not in volumes and len(volumes) == 3
    assert any("LOCALIZER" in what for what in volumes["AX FLAIR"].meta["ignored"])


def test_missing_handler(study: Path) -> None:
    def recode(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = JPEG2000MCLossless
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])

    edit(files(study / "3")[2], recode)
    err = rejected(files(study))
    assert err.reason == "missing_handler"
    assert "JPEG 2000 Part 2" in err.detail
    assert err.files == ["0003.dcm"]


def test_truncated_in_pixel_data(study: Path) -> None:
    path = files(study / "4")[1]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    err = rejected(files(study))
    assert (err.reason, err.files) == ("truncated", ["0002.dcm"])


def test_truncated_in_header(study: Path) -> None:
    path = files(study / "4")[1]
    path.write_bytes(path.read_bytes()[:400])
    assert rejected(files(study)).reason == "truncated"


def test_not_dicom(study: Path) -> None:
    (study / "notes.txt").write_text("scanned at night\n" * 20)
    err = rejected([*files(study), study / "notes.txt"])
    assert (err.reason, err.files) == ("not_dicom", ["notes.txt"])


@pytest.mark.parametrize("keyword", ["PatientID", "StudyInstanceUID"])
def test_mixed_patients(study: Path, keyword: str) -> None:
    other = {"PatientID": "OTHER-PATIENT-77", "StudyInstanceUID": "1.2.826.0.1.99"}[keyword]
    edit(files(study / "7")[0], lambda ds: setattr(ds, keyword, other))
    err = rejected(files(study))
    assert err.reason == "mixed_patients"
    ident = PatientIdentity()
    for value in (other, ident.patient_id, ident.name, pydicom.dcmread(
            files(study / "3")[0]).StudyInstanceUID):
        assert value not in str(err)


def test_missing_slice_position(study: Path) -> None:
    edit(files(study / "3")[1], lambda ds: delattr(ds, "ImagePositionPatient"))
    err = rejected(files(study))
    assert (err.reason, err.files) == ("slice_positions", ["0002.dcm"])


def test_duplicated_slice_position(study: Path) -> None:
    first = pydicom.dcmread(files(study / "3")[0])
    edit(files(study / "3")[3], lambda ds: setattr(ds, "ImagePositionPatient",
                                                   first.ImagePositionPatient))
    err = rejected(files(study))
    assert err.reason == "slice_positions" and "position of another slice" in err.detail


def test_uneven_spacing(study: Path) -> None:
    files(study / "4")[2].unlink()  # a slice missing from the middle of the series
    err = rejected(files(study))
    assert err.reason == "slice_positions" and "uneven spacing" in err.detail
    assert "AX T1 PRE" in err.detail


def test_no_usable_series_says_why_each_was_ignored(study: Path) -> None:
    for path in files(study):
        edit(path, lambda ds: setattr(ds, "PixelSpacing", [0, 0]))
    err = rejected(files(study))
    assert err.reason == "no_flair" and "no usable image series" in err.detail
    assert "AX FLAIR" in err.detail and "no valid Pixel Spacing" in err.detail


def test_limits(study: Path) -> None:
    small_files = StudyLimits(file_bytes=1000, slice_pixels=LIMITS.slice_pixels,
                              study_slices=64, study_pixels=LIMITS.study_pixels)
    assert rejected(files(study), small_files).reason == "too_large"
    few_slices = StudyLimits(file_bytes=LIMITS.file_bytes, slice_pixels=LIMITS.slice_pixels,
                             study_slices=4, study_pixels=LIMITS.study_pixels)
    assert rejected(files(study), few_slices).reason == "too_many_slices"
    small_slices = StudyLimits(file_bytes=LIMITS.file_bytes, slice_pixels=31 * 32,
                               study_slices=64, study_pixels=LIMITS.study_pixels)
    assert rejected(files(study), small_slices).reason == "too_large"


def test_study_id_from_the_study_uid() -> None:
    sid = study_id_from_uid("1.2.826.0.1.3680043.8.498.1")
    assert sid == study_id_from_uid("1.2.826.0.1.3680043.8.498.1\x00")  # DICOM padding
    assert sid.startswith("dcm-") and len(sid) == 20 and is_study_id(sid)
    assert "3680043" not in sid
    assert sid != study_id_from_uid("1.2.826.0.1.3680043.8.498.2")
