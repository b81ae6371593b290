"""A slice number too large for the tables (``P_99999999999999999999999.tif``) is a bad name.

Ingest quarantines the file and keeps the rest of the export; scoring quarantines the study and
goes on with the next one.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from support import copy_model

from brain_tumor import steps
from brain_tumor.devtools.synth import SynthSpec, make_export, make_studies
from brain_tumor.ingest.exports import upload_export
from brain_tumor.ingest.naming import MAX_SLICE_NUMBER, BadName, parse_slice_path
from brain_tumor.ingest.run import ingest_export
from brain_tumor.scoring.readers import upload_study
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

HUGE = "99999999999999999999999"
PATIENT = "TCGA_CS_4941_19960909"


@pytest.mark.parametrize("number", [HUGE, str(MAX_SLICE_NUMBER + 1), "9" * 400])
def test_parse_refuses_numbers_out_of_range(number):
    with pytest.raises(BadName, match=f"slice number .* over {MAX_SLICE_NUMBER}"):
        parse_slice_path(f"{PATIENT}/{PATIENT}_{number}.tif")
    assert parse_slice_path(f"{PATIENT}/{PATIENT}_{MAX_SLICE_NUMBER}.tif").slice_index == \
        MAX_SLICE_NUMBER
    assert parse_slice_path(f"{PATIENT}/{PATIENT}_007.tif").slice_index == 7


def test_ingest_quarantines_the_file_and_keeps_the_export(tmp_path: Path, settings, store):
    report = make_export(tmp_path / "e1", SynthSpec(patients=3, slices=4, size=32, seed=2))
    folder = report.root / report.patients[0]
    pid = report.patients[0]
    huge = folder / f"{pid}_{HUGE}.tif"
    huge.write_bytes((folder / f"{pid}_1.tif").read_bytes())
    (folder / f"{pid}_{HUGE}_mask.tif").write_bytes((folder / f"{pid}_1_mask.tif").read_bytes())
    upload_export(store, settings, report.root, export_id="e1")

    result = ingest_export(store, settings, "e1")

    assert result.counts["accepted"] == report.slices
    q = result.quarantine
    assert sorted(q["path"].str.rsplit("/", n=1).str[-1]) == sorted(
        [huge.name, f"{pid}_{HUGE}_mask.tif"])
    assert set(q["reason"]) == {"bad_name"}
    assert q["detail"].str.contains(f"over {MAX_SLICE_NUMBER}").all()


@pytest.fixture
def scoring_env(trained, tmp_path):
    """Settings of a fresh bucket holding a copy of the session model; its version."""
    model_settings, record = trained
    settings = model_settings.model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}"})
    version = copy_model(model_settings, record["model_version"], settings)
    return settings, ObjectStore.from_settings(settings), version


def test_score_quarantines_the_study_and_scores_the_next(scoring_env, tmp_path):
    settings, store, version = scoring_env
    bad, good = make_studies(tmp_path / "studies", SynthSpec(patients=2, slices=3, size=32))
    (bad / f"{bad.name}_{HUGE}.tif").write_bytes((bad / f"{bad.name}_1.tif").read_bytes())
    incoming = IncomingStore(store, settings)
    upload_study(incoming, bad, "a-bad")
    upload_study(incoming, good, "b-good")

    result = steps.score(settings, None, version)

    assert [r["study_id"] for r in result["studies"]] == ["b-good"]
    assert result["studies"][0]["status"] == "scored"
    assert [(q["study_id"], q["reason"]) for q in result["quarantined"]] == [("a-bad", "bad_name")]
    assert HUGE in result["quarantined"][0]["detail"]
    scores = ScoreStore(store, settings)
    record = scores.quarantine_record(version, "a-bad")
    assert record["reason"] == "bad_name" and record["files"] == [
        incoming.prefix("a-bad") + f"{bad.name}_{HUGE}.tif"]
    assert scores.output_names(version, "a-bad") == []
    assert set(scores.done_ids(version)) == {"b-good"}
    # the next run skips the scored study and reports the bad one again instead of crashing
    again = steps.score(settings, None, version)
    assert [r["status"] for r in again["studies"]] == ["skipped"]
    assert [q["reason"] for q in again["quarantined"]] == ["bad_name"]
