"""Hostile studies in the clinical formats and TIFF headers that lie, scored in one run.

Each study is written straight into ``incoming/`` (as another tool would, then sealed), beside
one good TIFF study. One ``score`` run over all of them scores the good study and quarantines
every hostile one with its reason: no traceback, and the run goes on.
"""

from __future__ import annotations

import gzip
import io
import struct
import uuid
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from support import copy_model

from brain_tumor import steps
from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.devtools.synth_dicom import DicomSpec, write_study
from brain_tumor.scoring.readers import upload_study
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

MiB = 2**20


def tiff_header_only(width: int, height: int) -> bytes:
    """A little-endian TIFF of one 8-bit sample whose header claims width x height and whose
    strip is empty: a header that lies."""
    fields = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
              (273, 4, 8), (277, 3, 1), (278, 4, max(height, 1)), (279, 4, 0)]
    entries = b"".join(struct.pack("<HHI", tag, kind, 1)
                       + (struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0))
                       for tag, kind, value in fields)
    return (b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", len(fields)) + entries
            + struct.pack("<I", 0))


def _dicom_files(tiff_folder: Path, out: Path, change: dict[str, object],
                 series: str = "AX FLAIR", first_only: bool = False) -> dict[str, bytes]:
    """A DICOM study of tiff_folder with the attributes in change set on the instances of one
    series (or on its first instance); name -> bytes."""
    write_study(tiff_folder, out, DicomSpec(uid_seed=out.name))
    found: dict[str, bytes] = {}
    hit = False
    for path in sorted(out.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        if ds.SeriesDescription == series and not (first_only and hit):
            hit = True
            for keyword, value in change.items():
                setattr(ds, keyword, value)
            buf = io.BytesIO()
            ds.save_as(buf)
            found[path.relative_to(out).as_posix().replace("/", "-")] = buf.getvalue()
        else:
            found[path.relative_to(out).as_posix().replace("/", "-")] = path.read_bytes()
    return found


def _zip(members: dict[str, bytes], zeros: list[int] = (), empty: int = 0) -> bytes:
    """A zip of members, plus members of zeros (deflated) and empty members."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for i, size in enumerate(zeros):
            with zf.open(f"junk/zeros_{i}.dcm", "w") as out:
                for _ in range(size // MiB):
                    out.write(bytes(MiB))
        for i in range(empty):
            zf.writestr(f"junk/{i}.dcm", b"")
    return buf.getvalue()


def _nifti_header(shape: tuple[int, ...], srow_z: list[float] | None = None) -> bytes:
    """A gzipped NIfTI-1 FLAIR holding only a header (shape, an optional affine row), the dims
    written raw so that they may be negative."""
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    header = img.header
    header["sform_code"], header["qform_code"] = 1, 0
    if srow_z is not None:
        header["srow_z"] = srow_z
    block = bytearray(header.binaryblock)
    struct.pack_into("<8h", block, 40, len(shape), *shape, *[1] * (7 - len(shape)))
    return gzip.compress(bytes(block) + bytes(4) + bytes(4 * 8 * 8 * 2))


def _hostile_studies(tiff: Path, tmp: Path) -> dict[str, tuple[dict[str, bytes], str]]:
    """study id -> (files by name, the reason it must be quarantined with)."""
    members = _dicom_files(tiff, tmp / "zipped", {})
    slice_one = (tiff / f"{tiff.name}_1.tif").read_bytes()
    return {
        "dcm-multiframe": (_dicom_files(tiff, tmp / "mf", {"NumberOfFrames": 3},
                                        first_only=True), "unreadable"),
        "dcm-nan-spacing": (_dicom_files(tiff, tmp / "nan", {"PixelSpacing": ["nan", "nan"]}),
                            "no_flair"),
        "dcm-zero-spacing": (_dicom_files(tiff, tmp / "zero", {"PixelSpacing": [0, 0]}),
                             "no_flair"),
        "dcm-zero-orientation": (_dicom_files(tiff, tmp / "iop", {
            "ImageOrientationPatient": [0, 0, 0, 0, 0, 0]}), "slice_positions"),
        "dcm-zip-many-members": ({"study.zip": _zip(members, empty=5000)}, "too_many_slices"),
        "dcm-zip-bomb": ({"study.zip": _zip(members, zeros=[4 * MiB] * 4)}, "too_large"),
        "nii-huge-header": ({"FLAIR.nii.gz": _nifti_header((32767, 32767, 100))}, "too_large"),
        "nii-singular-affine": ({"FLAIR.nii.gz": _nifti_header((8, 8, 5), [0.0] * 4)},
                                "unreadable"),
        "nii-negative-dim": ({"FLAIR.nii.gz": _nifti_header((8, -5, 4))}, "not_3d"),
        "tif-zero-size": ({"S_1.tif": slice_one, "S_2.tif": tiff_header_only(0, 32)},
                          "unreadable"),
        "tif-4g-header": ({"S_1.tif": slice_one, "S_2.tif": tiff_header_only(2**32 - 1,
                                                                              2**32 - 1)},
                          "too_large"),
    }


@pytest.fixture
def scoring_env(trained):
    """Settings of a fresh bucket holding a copy of the session model (study budget lowered
    so that a small zip bomb is past it); its version."""
    model_settings, record = trained
    settings = model_settings.model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}",
                                                 "max_study_pixels": MiB})
    version = copy_model(model_settings, record["model_version"], settings)
    return settings, ObjectStore.from_settings(settings), version


def test_hostile_clinical_studies_are_quarantined_and_the_run_goes_on(scoring_env, tmp_path):
    settings, store, version = scoring_env
    [tiff] = make_studies(tmp_path / "tiff", SynthSpec(patients=1, slices=5, size=32, seed=2,
                                                       tumor_free_patients=0))
    incoming = IncomingStore(store, settings)
    hostile = _hostile_studies(tiff, tmp_path)
    for sid, (files, _) in hostile.items():
        for name, data in files.items():
            incoming.put(sid, name, data)
        incoming.seal(sid)
    upload_study(incoming, tiff, "z-good")

    result = steps.score(settings, None, version)

    assert [(r["study_id"], r["status"]) for r in result["studies"]] == [("z-good", "scored")]
    got = {q["study_id"]: q["reason"] for q in result["quarantined"]}
    assert got == {sid: reason for sid, (_, reason) in hostile.items()}
    scores = ScoreStore(store, settings)
    for sid, (_, reason) in hostile.items():
        record = scores.quarantine_record(version, sid)
        assert record["reason"] == reason and record["detail"], sid
        assert "Traceback" not in record["detail"] and not scores.is_done(version, sid)
    details = {q["study_id"]: q["detail"] for q in result["quarantined"]}
    assert "multi-frame" in details["dcm-multiframe"]
    assert "5015 members" in details["dcm-zip-many-members"]
    assert "singular" in details["nii-singular-affine"]
    assert "pixels" in details["nii-huge-header"]
    assert "4294967295x4294967295" in details["tif-4g-header"]
    assert set(scores.done_ids(version)) == {"z-good"}
