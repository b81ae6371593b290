"""NIfTI studies scored like TIFF folders: submit, read by format, score, physical units.

Round trip: one synthetic TIFF study is written as NIfTI volumes (16-bit, square 0.9 mm
pixels, 3.3 mm between slices). The NIfTI reader must hand the model exactly the kaggle_3m
intensity rule's output of those volumes; that output, written as a TIFF folder (what a
``kaggle_3m`` folder of this study would hold), is scored through the TIFF path, and the two
agree: probabilities within ``TOLERANCE``, identical labels and mask areas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import write_tiff_study

from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.devtools.synth_nifti import SCALE, NiftiSpec, tiff_volume, write_nifti_study
from brain_tumor.ml.predict import LoadedModel
from brain_tumor.scoring import study as score
from brain_tumor.scoring.clinical.intensity import map_volume
from brain_tumor.scoring.contracts import StudyRejected
from brain_tumor.scoring.readers import study_reader, upload_study
from brain_tumor.settings import Settings
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.schemas import validate_record
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

SPEC = NiftiSpec(pixel_spacing=(0.9, 0.9), spacing=3.3)
VOXEL_ML = 0.9 * 0.9 * 3.3 / 1000
TOLERANCE = 1e-5  # probability


def _tiff_study(tmp_path: Path) -> Path:
    [folder] = make_studies(tmp_path / "tiff", SynthSpec(
        patients=1, slices=6, size=32, seed=5, tumor_free_patients=0, tumor_fraction=0.5))
    return folder


def _outputs(store: ObjectStore, settings: Settings, model: LoadedModel,
             sid: str) -> tuple[dict, object]:
    scores = ScoreStore(store, settings)
    summary = validate_record("study_summary", scores.summary(model.version, sid))
    table = store.get_parquet(scores.output_key(model.version, sid, "slices.parquet"))
    return summary, table


def test_a_nifti_study_scores_like_its_tiff_folder(env, model, tmp_path):
    settings, store = env
    incoming = IncomingStore(store, settings)
    folder = _tiff_study(tmp_path)
    nifti = tmp_path / "nifti"
    write_nifti_study(folder, nifti, SPEC)
    assert upload_study(incoming, nifti, "as-nifti") == ("as-nifti", 3)
    volume = tiff_volume(folder)
    mapped = np.stack([map_volume(SCALE * volume[..., c].astype(np.float64))[0]
                       for c in range(3)], axis=-1)
    read = study_reader(incoming, settings).read("as-nifti")
    np.testing.assert_array_equal(np.stack(read.images), mapped)
    reference = write_tiff_study(tmp_path / "kaggle", list(mapped))
    assert upload_study(incoming, reference, "as-tiff") == ("as-tiff", 6)

    by_tiff = score.score_study(store, settings, model, "as-tiff")
    by_nifti = score.score_study(store, settings, model, "as-nifti")
    assert by_tiff["status"] == by_nifti["status"] == "scored"
    tiff_summary, tiff_table = _outputs(store, settings, model, "as-tiff")
    summary, table = _outputs(store, settings, model, "as-nifti")

    assert len(table) == len(tiff_table) == 6
    prob, tiff_prob = table["probability"].to_numpy(), tiff_table["probability"].to_numpy()
    assert np.abs(prob - tiff_prob).max() <= TOLERANCE, (prob, tiff_prob)
    np.testing.assert_array_equal(table["label"], tiff_table["label"])
    np.testing.assert_array_equal(table["tumor_pixels"], tiff_table["tumor_pixels"])

    assert summary["format"] == "nifti" and summary["reduced_sequences"] is False
    assert summary["spacing_mm"] == pytest.approx([3.3, 0.9, 0.9])
    assert summary["voxel_volume_ml"] == pytest.approx(VOXEL_ML)
    assert tiff_summary["format"] == "tiff"
    assert tiff_summary["tumor_volume_ml"] is None and tiff_summary["tumor_extent_mm"] is None
    assert tiff_table["tumor_area_mm2"].isna().all()

    area = table["tumor_area_mm2"].fillna(0).sum()
    assert summary["tumor_volume_ml"] == pytest.approx(area * 3.3 / 1000, rel=1e-3)
    if summary["tumor_present"]:
        extent = summary["tumor_extent_mm"]
        assert extent[0] == pytest.approx(3.3 * (table.loc[table["label"] == 1, "slice_index"]
                                                 .agg(np.ptp) + 1))
        assert 0 < extent[1] <= 32 * 0.9 and 0 < extent[2] <= 32 * 0.9
    tumor_rows = table[table["tumor_pixels"] > 0]
    assert tumor_rows["bbox_height_mm"].notna().all() and tumor_rows["bbox_width_mm"].gt(0).all()
    prefix = incoming.prefix("as-nifti")
    assert table["source_key"].tolist() == [f"{prefix}FLAIR.nii.gz#{k}" for k in range(6)]


def test_clinical_rejections_are_quarantined_with_their_reason(env, model, tmp_path):
    settings, store = env
    incoming = IncomingStore(store, settings)
    nifti = tmp_path / "t1-only"
    write_nifti_study(_tiff_study(tmp_path), nifti, NiftiSpec(sequences=("t1_pre",)))
    upload_study(incoming, nifti, "no-flair")
    incoming.put("junk", "notes.txt", b"no images here")
    incoming.seal("junk")
    scores = ScoreStore(store, settings)
    for sid, reason in (("no-flair", "no_flair"), ("junk", "empty")):
        with pytest.raises(StudyRejected) as exc:
            score.score_study(store, settings, model, sid)
        assert exc.value.reason == reason
        record = store.get_json(scores.quarantine_key(model.version, sid))
        assert record["reason"] == reason and not scores.is_done(model.version, sid)
        assert record["files"] == [] or all(f.startswith(incoming.prefix(sid))
                                            for f in record["files"])
