"""Scoring in chunks: one model load per chunk of studies, each study all-or-nothing."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from brain_tumor import steps
from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.scoring.readers import upload_study
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore, StorageError


@pytest.fixture
def chunk_env(trained, tmp_path: Path):
    """A fresh bucket with the session's model and three studies, the middle one corrupt."""
    from support import copy_model

    source, record = trained
    settings = source.model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}"})
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    version = copy_model(source, record["model_version"], settings)
    folders = make_studies(tmp_path / "studies", SynthSpec(patients=3, slices=3, size=32, seed=8))
    incoming = IncomingStore(store, settings)
    ids = [upload_study(incoming, folder)[0] for folder in folders]
    bad = next(folders[1].glob("*_2.tif"))
    incoming.put(ids[1], bad.name, b"not a tiff")
    incoming.seal(ids[1])  # the manifest covers the corrupt slice: the reader gets to see it
    return settings, store, version, ids


def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from brain_tumor.ml import predict

    loads: list[str] = []
    real = predict.load_model_version
    monkeypatch.setattr(predict, "load_model_version",
                        lambda store, settings, version: loads.append(version)
                        or real(store, settings, version))
    return loads


def test_a_chunk_loads_the_model_once_and_quarantines_its_bad_study(chunk_env, monkeypatch):
    settings, store, version, ids = chunk_env
    loads = _count_loads(monkeypatch)

    chunk = steps.score_chunk(settings, version, ids)

    assert loads == [version]
    assert [r["status"] for r in chunk["results"]] == ["scored", "quarantined", "scored"]
    assert chunk["results"][1]["reason"] == "unreadable" and chunk["failed"] == []
    scores = ScoreStore(store, settings)
    assert [scores.is_done(version, sid) for sid in ids] == [True, False, True]
    assert scores.quarantine_record(version, ids[1])["reason"] == "unreadable"


def test_a_failing_study_is_reported_and_the_chunk_goes_on(chunk_env, monkeypatch):
    from brain_tumor.scoring.study import ScoringPipeline

    settings, store, version, ids = chunk_env
    real = ScoringPipeline._read

    def outage(pipeline, study_id):
        if study_id == ids[0]:
            raise StorageError("simulated outage")
        return real(pipeline, study_id)

    monkeypatch.setattr(ScoringPipeline, "_read", outage)
    chunk = steps.score_chunk(settings, version, ids)

    assert chunk["failed"] == [{"study_id": ids[0], "error": "StorageError: simulated outage"}]
    assert [r["study_id"] for r in chunk["results"]] == ids[1:]
    monkeypatch.setattr(ScoringPipeline, "_read", real)
    again = steps.score_chunk(settings, version, ids)  # the retry: done studies are skipped
    assert [r["status"] for r in again["results"]] == ["scored", "quarantined", "skipped"]


def test_the_score_command_loads_a_model_version_once_for_all_studies(chunk_env, monkeypatch):
    settings, store, version, ids = chunk_env
    loads = _count_loads(monkeypatch)

    result = steps.score(settings, ids, version)

    assert loads == [version]
    assert sorted(r["study_id"] for r in result["studies"]) == [ids[0], ids[2]]
    assert [q["study_id"] for q in result["quarantined"]] == [ids[1]]
