"""Scoring many studies: read ahead in a background thread, predicted together, quarantine
per study."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.scoring.contracts import StudyRejected
from brain_tumor.scoring.engines import load_engine
from brain_tumor.scoring.readers import upload_study
from brain_tumor.scoring.study import build_pipeline
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning",
                                        "ignore::FutureWarning", "ignore::UserWarning")


def test_score_many_reads_ahead_and_keeps_the_quarantine(trained, tmp_path: Path):
    source, record = trained
    version = record["model_version"]
    settings = source.model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}"})
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    folders = make_studies(tmp_path / "s", SynthSpec(patients=4, slices=3, size=32, seed=6))
    incoming = IncomingStore(store, settings)
    ids = [upload_study(incoming, folder)[0] for folder in folders]
    incoming.put(ids[2], next(folders[2].glob("*_1.tif")).name, b"not a tiff")
    incoming.seal(ids[2])
    engine = load_engine(ObjectStore.from_settings(source), source, version)
    pipeline = build_pipeline(store, settings, engine)
    reads: list[tuple[str, str]] = []
    real_read = pipeline.reader.read

    def read(study_id: str):
        reads.append((study_id, threading.current_thread().name))
        return real_read(study_id)

    pipeline.reader.read = read

    outcomes = dict(pipeline.score_many(ids))

    threads = dict(reads)
    assert sorted(sid for sid, _ in reads) == sorted(ids)  # each study read once
    assert all(threads[sid].startswith("read-ahead") for sid in ids)
    assert isinstance(outcomes[ids[2]], StudyRejected)
    assert [outcomes[sid]["status"] for sid in (ids[0], ids[1], ids[3])] == ["scored"] * 3
    scores = ScoreStore(store, settings)
    assert scores.quarantine_record(version, ids[2])["reason"] == "unreadable"
    assert [scores.is_done(version, sid) for sid in ids] == [True, True, False, True]
    again = dict(pipeline.score_many(ids))  # done studies are skipped, unread
    assert [again[sid]["status"] for sid in (ids[0], ids[1], ids[3])] == ["skipped"] * 3
    assert [sid for sid, _ in reads[4:]] == [ids[2]]
