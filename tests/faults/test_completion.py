"""A partly uploaded export or study is never taken as whole.

An upload killed half-way (simulated by an S3 put that fails after N files) leaves files but no
manifest: the export is not listed as new nor ingested, the study not planned nor scored; both
are reported once older than ``incomplete_after_minutes``; a second ``upload`` / ``submit``
sends only what is missing, writes the manifest, and the whole folder is taken. A file changed
after sealing is caught, and ``seal`` completes a folder another tool copied.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import copy_model

from brain_tumor import steps
from brain_tumor.cli import main
from brain_tumor.devtools.synth import SynthSpec, make_export, make_studies
from brain_tumor.ingest.exports import (
    IncompleteExport,
    list_exports,
    upload_export,
)
from brain_tumor.ingest.run import ingest_export
from brain_tumor.scoring import batch
from brain_tumor.scoring.readers import upload_study
from brain_tumor.settings import settings_to_env
from brain_tumor.store import manifests
from brain_tumor.store.datasets import DatasetStore
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectInfo, ObjectStore, StorageError

KILLED_AFTER = 10


def _kill_after(monkeypatch: pytest.MonkeyPatch, store: ObjectStore, method: str,
                n: int) -> list[str]:
    """Make store.<method> fail once n calls have succeeded; returns the keys written."""
    real = getattr(store, method)
    written: list[str] = []
    lock = threading.Lock()

    def put(*args: object, **kwargs: object) -> object:
        key = args[1] if method == "upload_file" else args[0]
        with lock:
            if len(written) >= n:
                raise StorageError(f"simulated kill before {key}")
            written.append(str(key))
        return real(*args, **kwargs)

    monkeypatch.setattr(store, method, put)
    return written


def _count_calls(monkeypatch: pytest.MonkeyPatch, store: ObjectStore, method: str) -> list[str]:
    real = getattr(store, method)
    calls: list[str] = []
    lock = threading.Lock()

    def put(*args: object, **kwargs: object) -> object:
        with lock:
            calls.append(str(args[1] if method == "upload_file" else args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(store, method, put)
    return calls


def _warnings(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_killed_upload_is_not_taken_is_reported_and_resumes(tmp_path: Path, settings, store,
                                                            monkeypatch, caplog):
    report = make_export(tmp_path / "e1", SynthSpec(patients=4, slices=4, size=32, seed=3))
    total = sum(1 for p in report.root.rglob("*") if p.is_file())
    _kill_after(monkeypatch, store, "upload_file", KILLED_AFTER)
    with pytest.raises(StorageError, match="simulated kill"):
        upload_export(store, settings, report.root)
    stored = [o.key for o in store.list("exports/e1/")]
    assert len(stored) == KILLED_AFTER and "exports/e1/_manifest.json" not in stored

    assert list_exports(store, settings) == []
    assert steps.new_exports(settings.model_copy(
        update={"incomplete_after_minutes": 24 * 60})) == []
    assert "e1" not in _warnings(caplog)  # too young to report
    caplog.clear()
    assert steps.new_exports(settings.model_copy(update={"incomplete_after_minutes": 0})) == []
    warned = _warnings(caplog)
    assert f"export e1: {KILLED_AFTER} file(s), no manifest" in warned
    assert "exports seal e1" in warned
    with pytest.raises(IncompleteExport, match=rf"'e1' is incomplete: {KILLED_AFTER} file"):
        ingest_export(store, settings, "e1")
    assert DatasetStore(store, settings).head().version is None

    monkeypatch.undo()
    sent = _count_calls(monkeypatch, store, "upload_file")
    assert upload_export(store, settings, report.root) == "e1"  # resumes instead of refusing
    assert len(sent) == total - KILLED_AFTER
    assert not set(sent) & set(stored)  # what had arrived is not sent again
    assert list_exports(store, settings) == ["e1"]
    assert steps.new_exports(settings) == ["e1"]
    record = store.get_json("exports/e1/_manifest.json")
    assert record["kind"] == "export" and record["file_count"] == total
    result = ingest_export(store, settings, "e1")
    assert result.counts["accepted"] == report.slices  # the whole export, every slice
    assert result.counts["files"] == total  # the manifest is not an export file


@pytest.mark.parametrize("change", ["changed", "missing", "extra"])
def test_a_file_changed_after_sealing_is_caught(tmp_path: Path, settings, store, change):
    report = make_export(tmp_path / "e1", SynthSpec(patients=2, slices=3, size=32, seed=4))
    upload_export(store, settings, report.root)
    victim = sorted(o.key for o in store.list("exports/e1/") if o.key.endswith("_1.tif"))[0]
    path = victim.removeprefix("exports/e1/")
    if change == "changed":  # same size, other bytes: only the ETag / sha256 tells
        data = bytearray(store.get(victim))
        data[-1] ^= 0xFF
        store.put(victim, bytes(data))
    elif change == "missing":
        store.delete(victim)
    else:
        path = path.replace("_1.tif", "_77.tif")
        store.put("exports/e1/" + path, store.get(victim))

    with pytest.raises(IncompleteExport, match=rf"does not match its manifest.*1 {change} "
                                               rf"\({path}\)"):
        ingest_export(store, settings, "e1")
    assert DatasetStore(store, settings).head().version is None
    assert not list(store.list("ledger/"))


@pytest.fixture
def cli_env(settings, monkeypatch):
    for key, value in settings_to_env(settings).items():
        monkeypatch.setenv(key, value)
    return settings


def test_seal_completes_a_folder_copied_by_another_tool(tmp_path: Path, cli_env, store, capsys):
    settings = cli_env
    report = make_export(tmp_path / "copied", SynthSpec(patients=2, slices=3, size=32, seed=6))
    for path in sorted(p for p in report.root.rglob("*") if p.is_file()):  # another tool's copy
        store.put("exports/copied/" + path.relative_to(report.root).as_posix(), path.read_bytes())
    assert list_exports(store, settings) == []
    assert main(["--json", "exports", "seal"]) == 0  # no ids: lists what has no manifest
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["copied"]

    assert main(["exports", "seal", "copied"]) == 0
    assert "sealed export copied" in capsys.readouterr().out
    assert list_exports(store, settings) == ["copied"]
    assert store.get_json("exports/copied/_manifest.json")["sealed_by"] == "seal"
    assert main(["exports", "seal", "copied"]) == 0
    assert "complete already" in capsys.readouterr().out
    assert ingest_export(store, settings, "copied").counts["accepted"] == report.slices

    key = next(o.key for o in store.list("exports/copied/") if o.key.endswith(".tif"))
    store.put(key, b"replaced")
    assert main(["exports", "seal", "copied"]) == 1  # a sealed export is never replaced
    assert "1 changed" in capsys.readouterr().err


def test_manifest_comparison_and_age():
    record = manifests.build_record("study", "s1", [
        {"path": "a_1.tif", "size": 3, "sha256": "x", "etag": "e1"},
        {"path": "a_2.tif", "size": 3, "sha256": "y", "etag": "e2"}], "submit")
    listed = {"a_1.tif": ObjectInfo("k/a_1.tif", 3, "e1"),
              "a_3.tif": ObjectInfo("k/a_3.tif", 1, "e")}
    diff = manifests.compare(record, listed)
    assert (diff.missing, diff.extra, diff.changed) == (["a_2.tif"], ["a_3.tif"], [])
    assert diff.describe() == "1 missing (a_2.tif); 1 extra (a_3.tif)"
    assert not manifests.compare(record, {"a_1.tif": listed["a_1.tif"],
                                          "a_2.tif": ObjectInfo("k/a_2.tif", 3, "e2")})
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    objects = [ObjectInfo("in/s1/a_1.tif", 3, "e", now - timedelta(minutes=90)),
               ObjectInfo("in/s1/_manifest.json", 3, "e", now - timedelta(minutes=89)),
               ObjectInfo("in/s2/a_1.tif", 3, "e", now - timedelta(minutes=90)),
               ObjectInfo("in/s3/a_1.tif", 3, "e", now - timedelta(minutes=5)),
               ObjectInfo("in/top-level.tif", 3, "e", now)]
    states = manifests.folder_states(objects, "in/")
    assert sorted(states) == ["s1", "s2", "s3"] and states["s1"].sealed
    assert manifests.overdue(states, now, 60) == ["s2"]
    assert manifests.overdue(states, now, 0) == ["s2", "s3"]
    with pytest.raises(manifests.ManifestError, match="path, size, sha256 and etag"):
        manifests.check_record({**record, "files": [{"path": "a", "size": "3"}]})


@pytest.fixture
def scoring_env(trained):
    """Settings of a fresh bucket holding a copy of the session model; store; its version."""
    model_settings, record = trained
    settings = model_settings.model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}"})
    version = copy_model(model_settings, record["model_version"], settings)
    return settings, ObjectStore.from_settings(settings), version


def test_partial_study_is_not_scored_until_submit_resumes(scoring_env, tmp_path, monkeypatch,
                                                          caplog):
    settings, store, version = scoring_env
    folder = make_studies(tmp_path / "s", SynthSpec(patients=1, slices=5, size=32, seed=2))[0]
    incoming = IncomingStore(store, settings)
    _kill_after(monkeypatch, store, "put", 2)
    with pytest.raises(StorageError, match="simulated kill"):
        upload_study(incoming, folder, "half", io_workers=1)
    monkeypatch.undo()
    assert len(list(incoming.objects("half"))) == 2
    assert incoming.study_ids() == [] and list(incoming.incomplete()) == ["half"]

    plan = steps.plan_scoring(settings, model_version=version)
    assert plan["study_ids"] == [] and plan["incomplete"] == 1
    assert steps.score(settings, None, version) == {"model_version": version, "studies": [],
                                                    "quarantined": []}
    caplog.clear()
    batch.scan(store, settings.model_copy(update={"incomplete_after_minutes": 0}), version)
    assert "study half: 2 file(s), no manifest" in _warnings(caplog)
    result = steps.score(settings, ["half"], version)  # asked for by name: rejected
    assert result["studies"] == []
    assert [(q["study_id"], q["reason"]) for q in result["quarantined"]] == [("half", "incomplete")]
    assert "studies seal half" in result["quarantined"][0]["detail"]
    scores = ScoreStore(store, settings)
    assert not scores.is_done(version, "half") and scores.output_names(version, "half") == []

    sent = _count_calls(monkeypatch, store, "put")
    assert upload_study(incoming, folder, "half") == ("half", 5)  # submit again: resumes
    assert len([k for k in sent if k.endswith(".tif")]) == 3 and sent[-1].endswith(
        "_manifest.json")
    assert incoming.study_ids() == ["half"]
    scored = steps.score(settings, ["half"], version)["studies"]
    assert [(s["study_id"], s["status"], s["slices"]) for s in scored] == [("half", "scored", 5)]
    assert scores.is_done(version, "half")


def test_a_study_changed_after_submit_is_rejected_as_incomplete(scoring_env, tmp_path):
    settings, store, version = scoring_env
    folder = make_studies(tmp_path / "s", SynthSpec(patients=1, slices=3, size=32, seed=1))[0]
    incoming = IncomingStore(store, settings)
    upload_study(incoming, folder, "s1")
    key = next(k for k in (o.key for _, o in incoming.objects("s1")) if k.endswith("_2.tif"))
    data = bytearray(store.get(key))
    data[-1] ^= 0xFF
    store.put(key, bytes(data))

    result = steps.score(settings, ["s1"], version)

    assert result["studies"] == []
    q = result["quarantined"][0]
    assert q["reason"] == "incomplete" and "1 changed" in q["detail"]
    assert ScoreStore(store, settings).quarantine_record(version, "s1")["files"] == [key]
