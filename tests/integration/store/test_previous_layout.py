"""Objects written by the previous release (0.1.0: JSON records without ``schema_version``) are
read by today's stores and commands, as layout version 1, and reading them writes nothing."""

from __future__ import annotations

import json

import pytest

from brain_tumor.cli import main
from brain_tumor.settings import settings_to_env
from brain_tumor.store.datasets import DatasetStore
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.registry import Registry
from brain_tumor.store.schemas import VERSION_FIELD
from brain_tumor.store.scores import ScoreStore

DS1, DS2, M1, M2 = "ds-0123456789ab", "ds-ba9876543210", "m-aaaaaaaaaaaa", "m-bbbbbbbbbbbb"
RUN_ID = "scheduled__2026-11-30T02:00:00+00:00"
AT = "2026-11-30T02:00:00+00:00"


def _pretty(value: dict) -> bytes:
    """How 0.1.0's ``put_json`` wrote a record."""
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode()


def _compact(value: dict) -> bytes:
    """How 0.1.0 wrote the compare-and-swap pointers (HEAD.json, champion.json)."""
    return json.dumps(value).encode()


def _model(version: str, threshold: float) -> dict:
    return {"model_version": version, "dataset_version": DS2, "image_size": 32,
            "threshold": threshold, "threshold_rule": "youden", "backbone": "tiny",
            "keras_backend": "tensorflow", "best_epochs": {"classifier": 4, "segmenter": 6},
            "created_at": AT, "code_version": "0.1.0", "train_slices": 48, "val_slices": 12}


def _event(seq: int, action: str, model: str, previous: str | None) -> dict:
    return {"seq": seq, "action": action, "model_version": model, "previous_champion": previous,
            "dataset_version": DS2, "reason": f"{action} by the gate",
            "metrics": {"roc_auc": 0.91, "sensitivity": 0.8}, "run_id": RUN_ID, "at": AT}


#: every object as 0.1.0 wrote it: key -> bytes
PREVIOUS = {
    "datasets/HEAD.json": _compact({"version": DS2, "updated_at": AT}),
    f"datasets/{DS1}/dataset.json": _pretty({
        "version": DS1, "parent": None, "exports": ["e1"], "created_at": AT,
        "code_version": "0.1.0", "counts": {"patients": 10, "slices": 60, "tumor_slices": 20,
                                            "quarantined": 1, "changed": 0}}),
    f"datasets/{DS2}/dataset.json": _pretty({
        "version": DS2, "parent": DS1, "exports": ["e1", "e2"], "created_at": AT,
        "code_version": "0.1.0", "counts": {"patients": 12, "slices": 72, "tumor_slices": 25,
                                            "quarantined": 1, "changed": 2}}),
    "ledger/exports/e2.json": _pretty({
        "export_id": "e2", "fingerprint": "f" * 64, "dataset_version": DS2, "ingested_at": AT,
        "counts": {"files": 26, "slices": 12, "accepted": 12, "quarantined": 0, "added": 12,
                   "changed": 2}}),
    f"models/{M1}/model.json": _pretty(_model(M1, 0.41)),
    f"models/{M2}/model.json": _pretty(_model(M2, 0.37)),
    "registry/events/00000001.json": _pretty(_event(1, "promoted", M1, None)),
    "registry/events/00000002.json": _pretty(_event(2, "rejected", M2, M1)),
    "registry/champion.json": _compact({"model_version": M1,
                                        "event": "registry/events/00000001.json",
                                        "updated_at": AT}),
    f"scores/{M1}/STUDY_900/summary.json": _pretty({
        "study_id": "STUDY_900", "model_version": M1, "dataset_version": DS2,
        "tumor_present": True, "tumor_slices": 3, "slices": 5, "tumor_volume_voxels": 412,
        "max_probability": 0.97, "scored_at": AT}),
    f"scores/{M1}/_done/STUDY_900.json": _pretty({"study_id": "STUDY_900",
                                                  "model_version": M1, "at": AT}),
    "scores/batches/scheduled__2026-11-30T02_00_00_00_00.json": _pretty({
        "run_id": RUN_ID, "trigger": "scheduled", "model_version": M1, "studies_planned": 2,
        "studies_scored": 1, "studies_skipped": 0, "studies_quarantined": 1,
        "studies_failed": 0, "studies_deferred": 0, "studies_outside_window": 0,
        "tumors_found": 1, "slices_scored": 5, "mean_max_probability": 0.97,
        "seconds": {"read_s": 0.4, "model_s": 1.2, "write_s": 0.3},
        "quarantined": [{"study_id": "STUDY_901", "reason": "unreadable",
                         "detail": "STUDY_901_3.tif: not a TIFF"}],
        "failed": [], "started_at": AT, "finished_at": AT}),
}


@pytest.fixture
def previous(store, settings, monkeypatch):
    """A bucket holding only what 0.1.0 wrote; the CLI pointed at it."""
    for key, data in PREVIOUS.items():
        assert VERSION_FIELD.encode() not in data
        store.put(key, data, content_type="application/json")
    for name, value in settings_to_env(settings).items():
        monkeypatch.setenv(name, value)
    return store, settings


def _unchanged(store) -> None:
    """Reading wrote nothing: every object is still exactly what 0.1.0 wrote, and no more."""
    assert {o.key for o in store.list("")} == set(PREVIOUS)
    assert all(store.get(key) == data for key, data in PREVIOUS.items())


def test_stores_read_the_previous_layout_as_version_1(previous):
    store, settings = previous
    datasets = DatasetStore(store, settings)
    assert datasets.head().version == DS2 and datasets.resolve(None) == DS2
    record = datasets.record(DS2)
    assert record["parent"] == DS1 and record["counts"]["patients"] == 12
    assert record[VERSION_FIELD] == 1
    assert datasets.ledger()["e2"]["dataset_version"] == DS2

    models = ModelStore(store, settings)
    assert models.versions() == [M1, M2]
    model = models.record(M1)
    assert model["threshold"] == 0.41 and model["code_version"] == "0.1.0"
    assert model[VERSION_FIELD] == 1

    registry = Registry(store, settings)
    events = registry.events()
    assert [(e["seq"], e["action"], e["model_version"]) for e in events] == \
        [(1, "promoted", M1), (2, "rejected", M2)]
    assert all(e[VERSION_FIELD] == 1 for e in events)
    assert registry.champion() == M1 and registry.champion_history() == [M1]
    shown = registry.show(M2)
    assert not shown["champion"] and [e["seq"] for e in shown["events"]] == [2]

    scores = ScoreStore(store, settings)
    summary = scores.result(M1, "STUDY_900")
    assert summary is not None and summary["tumor_volume_voxels"] == 412
    assert summary[VERSION_FIELD] == 1
    assert set(scores.done_ids(M1)) == {"STUDY_900"}
    [batch] = scores.batches(10)
    assert batch["run_id"] == RUN_ID and batch["quarantined"][0]["study_id"] == "STUDY_901"
    assert scores.batch(RUN_ID)[VERSION_FIELD] == 1
    _unchanged(store)


def test_commands_read_the_previous_layout(previous, capsys):
    store, _ = previous
    assert main(["--json", "datasets"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["version"] == DS2 and record["counts"]["changed"] == 2
    assert main(["datasets", DS1]) == 0
    assert f"dataset {DS1} (parent None, exports e1)" in capsys.readouterr().out

    assert main(["--json", "registry", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["champion"] == M1
    assert [e["action"] for e in listed["events"]] == ["promoted", "rejected"]
    assert main(["registry", "list"]) == 0
    assert f"champion: {M1}" in capsys.readouterr().out

    assert main(["--json", "batches"]) == 0
    [batch] = json.loads(capsys.readouterr().out)
    assert batch["run_id"] == RUN_ID and batch["studies_quarantined"] == 1
    assert main(["batches"]) == 0
    text = capsys.readouterr().out
    assert RUN_ID in text and "quarantined STUDY_901: unreadable" in text
    _unchanged(store)
