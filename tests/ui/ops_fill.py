"""A bucket filled the way the pipeline fills it, for the ops pages' tests.

Two dataset versions (the second with a quarantined file), the session's tiny model published as
three model versions, real evaluations and gate results, registry events of every kind (promoted,
promoted, rolled back, rejected: the champion ends as the first model and the newest event is a
rejection), and two scoring batches through the same steps the scoring DAG runs (the second with
a DICOM study, which gets a DICOM SEG, and a quarantined study).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import copy_model

from brain_tumor import steps
from brain_tumor.devtools.synth import SynthSpec, make_export, make_studies
from brain_tumor.devtools.synth_dicom import DicomSpec, write_study
from brain_tumor.ingest.exports import upload_export
from brain_tumor.scoring.clinical.dicom_submit import upload_dicom_study
from brain_tumor.scoring.readers import upload_study
from brain_tumor.settings import Settings
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.registry import Registry
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

#: the trained fixture's export spec: the same export here gives the same dataset version id
FIRST_EXPORT = SynthSpec(patients=10, slices=6, size=32, seed=3, tumor_free_patients=1)
SECOND_EXPORT = SynthSpec(patients=4, slices=6, size=32, seed=11, tumor_free_patients=1,
                          first_patient=20, bad=("corrupt",))
RELAXED = {"gate_min_sensitivity": 0.0, "gate_min_roc_auc": 0.0, "gate_min_dice": 0.0,
           "gate_tolerance": 1.0}
STRICT = {"gate_min_sensitivity": 0.999, "gate_min_roc_auc": 0.999, "gate_min_dice": 0.999}
SECRET_MARKER = b"NOT-FOR-THE-BROWSER"
#: a study the session's tiny model finds tumor in (tests/integration/scoring/test_clinical_outputs)
DICOM_STUDY = SynthSpec(patients=1, slices=6, size=32, seed=5, tumor_free_patients=0,
                        tumor_fraction=0.5)


@dataclass
class Filled:
    """What the fill wrote, for the tests to compare pages against."""

    settings: Settings
    datasets: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # first, rejected, promoted-then-rolled-back
    champion: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)  # scored
    dicom_study: str = ""  # scored, with a DICOM SEG
    bad_study: str = ""
    secret_keys: list[str] = field(default_factory=list)


def _republish(store: ObjectStore, settings: Settings, version: str, dataset_version: str,
               created_at: str) -> None:
    """Make a copied model version a model trained on dataset_version at created_at."""
    models = ModelStore(store, settings)
    record = {**models.record(version), "dataset_version": dataset_version,
              "created_at": created_at}
    store.put_json(models.key(version, "model.json"), record)


def _gate(settings: Settings, candidate: str, dataset: str, champion: str | None,
          gate: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Gate and decide as retrain_nightly's gate and promote/reject tasks do."""
    gated = settings.model_copy(update=gate)
    result = steps.gate(gated, candidate, dataset, champion)
    return steps.decide(gated, result, run_id=run_id)


def _batch(settings: Settings, run_id: str) -> dict[str, Any]:
    """One scoring run as batch_score does it: plan, score the studies (one chunk), summarize."""
    from brain_tumor.store.datasets import utc_now

    started = utc_now()
    plan = steps.plan_scoring(settings)
    results = steps.score_chunk(settings, plan["model_version"], plan["study_ids"])["results"]
    return steps.finish_batch(settings, plan, results, run_id, started, "scheduled")


def fill(settings: Settings, trained: tuple[Settings, dict[str, Any]], work: Path) -> Filled:
    """Fill settings' bucket (see the module docstring)."""
    trained_settings, record = trained
    store = steps.open_store(settings)
    out = Filled(settings)

    first = make_export(work / "e1", FIRST_EXPORT)
    upload_export(store, settings, first.root, export_id="e1")
    out.datasets.append(steps.ingest(settings, ["e1"])["dataset_version"])
    steps.split(settings)
    assert out.datasets[0] == record["dataset_version"], "the first export must match trained's"

    second = make_export(work / "e2", SECOND_EXPORT)
    m1 = copy_model(trained_settings, record["model_version"], settings)
    m2 = copy_model(trained_settings, record["model_version"], settings, "m-candidate0002")
    m3 = copy_model(trained_settings, record["model_version"], settings, "m-candidate0003")
    out.models = [m1, m2, m3]
    _republish(store, settings, m1, out.datasets[0], "2026-11-20T01:00:00+00:00")
    steps.evaluate(settings, m1)
    registry = Registry(store, settings)
    out.events.append(_gate(settings, m1, out.datasets[0], None, RELAXED,
                            "scheduled__2026-11-20T02:00:00+00:00"))

    upload_export(store, settings, second.root, export_id="e2")
    out.datasets.append(steps.ingest(settings, ["e2"])["dataset_version"])
    steps.split(settings)
    for version, minute in ((m3, "01"), (m2, "02")):
        _republish(store, settings, version, out.datasets[1], f"2026-11-21T02:{minute}:00+00:00")
        steps.evaluate(settings, version)
    out.events.append(_gate(settings, m3, out.datasets[1], m1, RELAXED,
                            "scheduled__2026-11-21T02:00:00+00:00"))
    out.events.append(registry.rollback(reason="ops test: back to the first model", run_id="cli"))
    out.events.append(_gate(settings, m2, out.datasets[1], m1, STRICT,
                            "scheduled__2026-11-22T02:00:00+00:00"))
    out.champion = m1
    assert [e["action"] for e in out.events] == ["promoted", "promoted", "rolled_back", "rejected"]

    patients = sorted(p for p in first.root.iterdir() if p.is_dir())
    out.studies = [upload_study(IncomingStore(store, settings), patients[0], "study-a")[0]]
    out.batches.append(_batch(settings, "scheduled__2026-11-23T10:00:00+00:00"))
    out.studies.append(upload_study(IncomingStore(store, settings), patients[1], "study-b")[0])
    [tumor] = make_studies(work / "dicom-source", DICOM_STUDY)
    spec = DicomSpec(uid_seed="ops-dicom-study", pixel_spacing=(0.8, 0.8))
    out.dicom_study = upload_dicom_study(IncomingStore(store, settings),
                                         write_study(tumor, work / "dicom", spec))[0]
    bad = work / "study-bad"
    bad.mkdir()
    (bad / "bad_1.tif").write_bytes(b"this is not a TIFF")
    out.bad_study = upload_study(IncomingStore(store, settings), bad, "study-bad")[0]
    out.batches.append(_batch(settings, "scheduled__2026-11-23T10:10:00+00:00"))
    assert out.batches[-1]["studies_quarantined"] == 1
    summary = ScoreStore(store, settings).summary(m1, out.dicom_study)
    assert summary["dicom_seg"] == "seg.dcm", "the tiny model found no tumor: the SEG needs one"

    # objects outside every prefix the pages may read: path traversal must never reach them
    for key in ("secret.png", "private/overview.png", "private/model_card.md"):
        store.put(key, SECRET_MARKER)
        out.secret_keys.append(key)
    return out
