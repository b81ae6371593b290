"""Round trip: a synthetic TIFF study written as DICOM series (16-bit, rescaled, with spacing
and a frame of reference), submitted as a zip and scored, against the TIFF study itself.

What must agree, and how closely:

* the slices the DICOM reader hands the model are exactly the TIFF study's sequences (rescaled
  back from the 16-bit values) mapped by the intensity rule, in the same slice and channel
  order: the reader loses nothing and mixes nothing up;
* the scores: the ``kaggle_3m`` TIFFs are what the intensity rule made of the scanner's
  series, so the TIFF study to compare with is the rule's output written as TIFFs (what a
  ``kaggle_3m`` folder of this study would hold). Scored through the TIFF path and through the
  DICOM path, every slice's probability agrees within ``PROB_TOLERANCE`` and every label, mask
  area and the summary's counts are identical.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from support import write_tiff_study

from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.devtools.synth_dicom import DicomSpec, tiff_slices, write_study
from brain_tumor.scoring import study as score
from brain_tumor.scoring.clinical.dicom_submit import upload_dicom_study
from brain_tumor.scoring.clinical.intensity import map_volume
from brain_tumor.scoring.readers import study_reader, upload_study
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

PROB_TOLERANCE = 1e-5
SLICES = 8


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "rle"])
def test_dicom_scores_agree_with_tiff(trained, model, tmp_path: Path, compress: bool):
    settings = trained[0].model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}"})
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    incoming = IncomingStore(store, settings)
    folder = make_studies(tmp_path / "tiff", SynthSpec(patients=1, slices=SLICES, size=32,
                                                       seed=11, tumor_free_patients=0))[0]
    spec = DicomSpec(compress=compress, pixel_spacing=(0.8, 0.8))
    archive = write_study(folder, tmp_path / "dcm", spec, zip_to=tmp_path / "study.zip")
    dicom_id, count = upload_dicom_study(incoming, archive)
    assert count == 3 * SLICES

    read = study_reader(incoming, settings).read(dicom_id)
    slices = tiff_slices(folder)
    assert read.slice_index == list(range(1, SLICES + 1))
    mapped = [map_volume(4.0 * np.stack([s[..., c] for s in slices]))[0] for c in range(3)]
    for channel in range(3):  # pre-contrast T1, FLAIR, post-contrast T1
        np.testing.assert_array_equal(np.stack([img[..., channel] for img in read.images]),
                                      mapped[channel])
    assert read.summary["reduced_sequences"] is False
    reference = write_tiff_study(tmp_path / "kaggle", list(np.stack(mapped, axis=-1)))
    tiff_id, _ = upload_study(incoming, reference, "tiff-study")

    tiff = score.score_study(store, settings, model, tiff_id)
    dicom = score.score_study(store, settings, model, dicom_id)
    assert tiff["status"] == dicom["status"] == "scored"
    assert dicom["slices"] == tiff["slices"] == SLICES
    frames = [store.get_parquet(ScoreStore(store, settings).output_key(
        model.version, sid, "slices.parquet")) for sid in (tiff_id, dicom_id)]
    (tiff_p, dicom_p), (tiff_l, dicom_l) = ([f[c].to_numpy() for f in frames]
                                            for c in ("probability", "label"))
    assert float(np.abs(tiff_p - dicom_p).max()) <= PROB_TOLERANCE, (tiff_p, dicom_p)
    np.testing.assert_array_equal(dicom_l, tiff_l)
    np.testing.assert_array_equal(frames[1]["tumor_pixels"], frames[0]["tumor_pixels"])
    for field in ("tumor_slices", "tumor_present", "tumor_volume_voxels"):
        assert dicom[field] == tiff[field], field
    assert dicom["format"] == "dicom" and tiff["format"] == "tiff"
