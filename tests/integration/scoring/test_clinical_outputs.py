"""Clinical results out: a synthetic DICOM study scored through the real pipeline gets ``seg.dcm``
(a DICOM Segmentation of its FLAIR series), a synthetic NIfTI study ``mask.nii.gz`` (on the FLAIR
file's grid); both hold exactly the PNG masks, slice for slice, and summary.json lists them. A
DICOM study whose FLAIR series has no Frame of Reference UID is quarantined.

The synthetic slices are 32 x 32 pixels; the reader resizes them to the model's 256 x 256 grid
(x 8, no crop), so the mask of acquired pixel (r, c) of slice N is PNG pixel (8 r, 8 c) of
``masks/<N>.png``.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import SegmentationStorage
from support import assert_frames_on_sources

from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.devtools.synth_dicom import DicomSpec, write_study
from brain_tumor.devtools.synth_nifti import NiftiSpec, write_nifti_study
from brain_tumor.scoring import study as score
from brain_tumor.scoring.clinical.dicom_submit import upload_dicom_study
from brain_tumor.scoring.contracts import StudyPrediction, StudyRejected
from brain_tumor.scoring.readers import study_reader, upload_study
from brain_tumor.scoring.writers import ClinicalMaskWriter
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.schemas import validate_record
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

SLICES = 6
SIZE = 32
ZOOM = 256 // SIZE  # acquired pixel -> model-grid pixel
FLAIR_SERIES = "3"  # synth_dicom's folder of the "AX FLAIR" series


def _tiff_study(tmp_path: Path) -> Path:
    [folder] = make_studies(tmp_path / "tiff", SynthSpec(
        patients=1, slices=SLICES, size=SIZE, seed=5, tumor_free_patients=0,
        tumor_fraction=0.5))
    return folder


def _png_masks(scores: ScoreStore, version: str, sid: str) -> dict[int, np.ndarray]:
    """Slice number -> the PNG mask (boolean, model grid) of every tumor slice."""
    names = [n for n in scores.output_names(version, sid) if n.startswith("masks/")]
    out = {}
    for name in names:
        data = scores.get_output(version, sid, name)
        png = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        out[int(name[len("masks/"):-len(".png")])] = png == 255
    return out


def _on_acquired_pixels(png: np.ndarray) -> np.ndarray:
    assert png.shape == (SIZE * ZOOM, SIZE * ZOOM)
    return png[::ZOOM, ::ZOOM]


def _content_type(store: ObjectStore, key: str) -> str:
    return str(store.client.head_object(Bucket=store.bucket, Key=key)["ContentType"])


def test_a_dicom_study_gets_a_segmentation_of_its_flair(env, model, tmp_path: Path):
    settings, store = env
    folder = _tiff_study(tmp_path)
    spec = DicomSpec(uid_seed="clinical-out", pixel_spacing=(0.8, 0.8))
    write_study(folder, tmp_path / "dcm", spec)
    sid, _ = upload_dicom_study(IncomingStore(store, settings), tmp_path / "dcm")

    result = score.score_study(store, settings, model, sid)
    assert result["status"] == "scored"
    scores = ScoreStore(store, settings)
    summary = validate_record("study_summary", scores.summary(model.version, sid))
    assert summary["tumor_slices"] > 0, "the tiny model found no tumor: the SEG needs one"
    assert summary["dicom_seg"] == "seg.dcm" and summary["nifti_mask"] is None
    assert summary["mask_output_note"] is None
    assert _content_type(store, scores.output_key(model.version, sid, "seg.dcm")) == \
        "application/dicom"

    data = scores.get_output(model.version, sid, "seg.dcm")
    seg = hd.seg.segread(io.BytesIO(data))
    flair = sorted((pydicom.dcmread(p) for p in (tmp_path / "dcm" / FLAIR_SERIES).glob("*.dcm")),
                   key=lambda ds: int(ds.InstanceNumber))
    uids = [str(ds.SOPInstanceUID) for ds in flair]
    assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == flair[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == flair[0].StudyInstanceUID
    assert seg.PatientID == flair[0].PatientID and "InstitutionName" not in seg
    assert seg.SeriesInstanceUID not in {str(ds.SeriesInstanceUID) for ds in flair}
    assert len(seg.SeriesDescription) <= 64 and "not for diagnosis" in seg.SeriesDescription
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == model.version
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == flair[0].SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence] == uids
    # geometry: each frame lies on the FLAIR instance it references
    assert_frames_on_sources(seg, flair)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    np.testing.assert_allclose(measures.PixelSpacing, flair[0].PixelSpacing)
    assert (int(seg.Rows), int(seg.Columns)) == (SIZE, SIZE)
    # the mask: exactly the PNG masks, slice for slice (slice N is FLAIR instance N)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids,
                                               segment_numbers=[1])[..., 0].astype(bool)
    pngs = _png_masks(scores, model.version, sid)
    assert sorted(pngs) and int(seg.NumberOfFrames) == len(pngs)
    for n in range(1, SLICES + 1):
        expected = (_on_acquired_pixels(pngs[n]) if n in pngs
                    else np.zeros((SIZE, SIZE), bool))
        np.testing.assert_array_equal(pixels[n - 1], expected, err_msg=f"slice {n}")

    # scored again (a fresh run of the same model version): the same SEG UIDs
    again = ScoreStore(store, settings)
    store.delete(again.done_key(model.version, sid))
    score.score_study(store, settings, model, sid)
    rewritten = pydicom.dcmread(io.BytesIO(again.get_output(model.version, sid, "seg.dcm")))
    assert rewritten.SOPInstanceUID == seg.SOPInstanceUID
    assert rewritten.SeriesInstanceUID == seg.SeriesInstanceUID


def test_a_nifti_study_gets_a_mask_on_its_flair_grid(env, model, tmp_path: Path):
    settings, store = env
    folder = _tiff_study(tmp_path)
    spec = NiftiSpec(pixel_spacing=(0.9, 0.9), spacing=3.3, axcodes=("R", "A", "S"))
    paths = write_nifti_study(folder, tmp_path / "nifti", spec)
    source = nib.load(str(next(p for p in paths if p.name == "FLAIR.nii.gz")))
    sid, _ = upload_study(IncomingStore(store, settings), tmp_path / "nifti", "as-nifti")

    assert score.score_study(store, settings, model, sid)["status"] == "scored"
    scores = ScoreStore(store, settings)
    summary = validate_record("study_summary", scores.summary(model.version, sid))
    assert summary["tumor_slices"] > 0, "the tiny model found no tumor: the mask check needs one"
    assert summary["nifti_mask"] == "mask.nii.gz" and summary["dicom_seg"] is None
    assert summary["mask_output_note"] is None
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(scores.get_output(model.version, sid, "mask.nii.gz"))
    mask = nib.load(str(path))
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
    assert nib.aff2axcodes(mask.affine) == ("R", "A", "S")
    data = np.asarray(mask.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data).tolist()) <= {0, 1}
    # back to columns toward L, rows toward P (as the PNGs show the slices), slices upward
    lps = mask.as_reoriented(nib.orientations.ornt_transform(
        nib.orientations.io_orientation(mask.affine), nib.orientations.axcodes2ornt("LPS")))
    volume = np.asarray(lps.dataobj).transpose(2, 1, 0).astype(bool)  # slice, row, column
    pngs = _png_masks(scores, model.version, sid)
    assert sorted(pngs)
    for n in range(1, SLICES + 1):
        expected = (_on_acquired_pixels(pngs[n]) if n in pngs
                    else np.zeros((SIZE, SIZE), bool))
        np.testing.assert_array_equal(volume[n - 1], expected, err_msg=f"slice {n}")


def test_a_dicom_flair_without_frame_of_reference_is_quarantined(env, model, tmp_path: Path):
    settings, store = env
    folder = _tiff_study(tmp_path)
    write_study(folder, tmp_path / "dcm", DicomSpec(uid_seed="no-frame"))
    for path in (tmp_path / "dcm" / FLAIR_SERIES).glob("*.dcm"):
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path)
    sid, _ = upload_dicom_study(IncomingStore(store, settings), tmp_path / "dcm")

    with pytest.raises(StudyRejected) as exc:
        score.score_study(store, settings, model, sid)
    assert exc.value.reason == "no_frame_of_reference"
    scores = ScoreStore(store, settings)
    record = validate_record("study_quarantine",
                             scores.quarantine_record(model.version, sid))
    assert record["reason"] == "no_frame_of_reference"
    assert "'AX FLAIR'" in record["detail"] and "Frame of Reference UID" in record["detail"]
    assert not scores.is_done(model.version, sid)


@pytest.mark.parametrize("case", ["no_tumor", "withheld"])
def test_no_segmentation_without_tumor_or_for_withheld_results(store, settings, tmp_path: Path,
                                                               case: str):
    folder = _tiff_study(tmp_path)
    write_study(folder, tmp_path / "dcm", DicomSpec(uid_seed=f"policy-{case}"))
    incoming = IncomingStore(store, settings)
    sid, _ = upload_dicom_study(incoming, tmp_path / "dcm")
    study = study_reader(incoming, settings).read(sid)
    scores, version = ScoreStore(store, settings), "mv-policy"

    def prediction(tumor: bool, withheld: bool) -> StudyPrediction:
        masks = [np.zeros((SIZE * ZOOM, SIZE * ZOOM), bool) for _ in study.images]
        label = np.zeros(len(masks), int)
        if tumor:
            masks[2][96:160, 96:160], label[2] = True, 1
        return StudyPrediction(prob=label.astype(float), label=label, masks=masks,
                               geometry=[], summary={"withheld": withheld})

    pred = prediction(tumor=case == "withheld", withheld=case == "withheld")
    assert ClinicalMaskWriter().write(scores, version, study, pred) == []
    assert pred.summary["dicom_seg"] is None and pred.summary["nifti_mask"] is None
    expected = "no tumor slice" if case == "no_tumor" else "results withheld"
    assert expected in pred.summary["mask_output_note"]
    assert "seg.dcm" not in scores.output_names(version, sid)
    # the same study with a tumor, results shown: a SEG
    shown = prediction(tumor=True, withheld=False)
    assert ClinicalMaskWriter().write(scores, version, study, shown) == ["seg.dcm"]
    assert shown.summary["dicom_seg"] == "seg.dcm" and shown.summary["mask_output_note"] is None
    assert "seg.dcm" in scores.output_names(version, sid)
