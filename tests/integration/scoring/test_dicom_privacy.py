"""A DICOM study carrying known identifying values is submitted, scored the way the scoring DAG
scores it and listed: none of those values appears in any output object, the task results
(XCom), the batch summary, the logs or the command line's output."""

from __future__ import annotations

import io
import json
import logging
import uuid
from pathlib import Path

import pydicom
import pytest
from support import copy_model

from brain_tumor import steps
from brain_tumor.cli import main
from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.devtools.synth_dicom import DicomSpec, PatientIdentity, study_uid, write_study
from brain_tumor.settings import settings_to_env
from brain_tumor.store.ids import study_id_from_uid
from brain_tumor.store.storage import ObjectStore

IDENTITY = PatientIdentity(name="QUIMBY^ROSALIND", patient_id="MRN-7733-1942",
                           birth_date="19420817", accession="ACC-55AX-901",
                           institution="Lakeside Memorial Radiology",
                           referring="FENWICK^OTTOLINE")
OTHER_ID = "MRN-9911-0007"  # a second patient's ID in a study that mixes two


def secrets(spec: DicomSpec) -> list[str]:
    """Every identifying value, and the forms a careless writer might give them."""
    ident = spec.identity
    family, given = ident.name.split("^")
    date = ident.birth_date
    return [*ident.values(), family, given, f"{given} {family}", f"{date[:4]}-{date[4:6]}-"
            f"{date[6:]}", OTHER_ID, "FENWICK", "OTTOLINE", study_uid(spec)]


def stored_text(store: ObjectStore, key: str) -> str:
    """An output object as text: tables decoded (compressed columns hide nothing), JSON as is,
    anything else as its raw bytes."""
    if key.endswith(".parquet"):
        return store.get_parquet(key).to_json(orient="records", default_handler=str)
    return store.get(key).decode("latin-1")


@pytest.fixture
def env(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh bucket holding the session's model, its settings in the environment (CLI)."""
    source, record = trained
    settings = source.model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}",
                                         "home": tmp_path / "home"})
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    version = copy_model(source, record["model_version"], settings)
    for name, value in settings_to_env(settings).items():
        monkeypatch.setenv(name, value)
    return settings, store, version


def test_identifying_values_never_leave_the_study(env, tmp_path: Path, caplog, capsys):
    settings, store, version = env
    caplog.set_level(logging.DEBUG)
    folder = make_studies(tmp_path / "tiff", SynthSpec(patients=1, slices=6, size=32, seed=5,
                                                       tumor_free_patients=0))[0]
    good = DicomSpec(identity=IDENTITY, uid_seed="privacy-good")
    archive = write_study(folder, tmp_path / "good", good, zip_to=tmp_path / "QUIMBY.zip")
    mixed = DicomSpec(identity=IDENTITY, uid_seed="privacy-mixed")
    mixed_dir = write_study(folder, tmp_path / "mixed", mixed)
    one = sorted(mixed_dir.rglob("*.dcm"))[3]
    ds = pydicom.dcmread(one)
    ds.PatientID = OTHER_ID
    ds.save_as(one)

    assert main(["--json", "submit", str(archive)]) == 0
    assert main(["-v", "submit", str(mixed_dir)]) == 0
    sids = [study_id_from_uid(study_uid(good)), study_id_from_uid(study_uid(mixed))]
    assert all(sid.startswith("dcm-") and len(sid) == 20 for sid in sids)

    # the scoring DAG's steps: plan, a chunk (XCom: its results), the batch summary
    plan = steps.plan_scoring(settings, study_ids=sids, model_version=version)
    chunk = steps.score_chunk(settings, version, plan["study_ids"])
    summary = steps.finish_batch(settings, plan, chunk["results"], "manual__privacy",
                                 "2024-01-05T10:00:00+00:00", "manual")
    status = {r["study_id"]: r["status"] for r in chunk["results"]}
    assert status == {sids[0]: "scored", sids[1]: "quarantined"}, chunk
    assert chunk["results"][1]["reason"] == "mixed_patients"
    assert main(["--json", "batches"]) == 0
    assert main(["studies"]) == 0
    assert main(["score", sids[0], "--model-version", version]) == 0

    outputs = [o.key for o in store.list("") if not o.key.startswith("incoming/")
               and not o.key.startswith("models/")]
    assert any(k.endswith("summary.json") for k in outputs)
    assert any("quarantine" in k for k in outputs)
    incoming = [o.key for o in store.list("incoming/")]
    assert incoming and all(k.split("/")[1] in sids for k in incoming)
    raw = store.get(next(k for k in incoming if k.endswith(".dcm"))).decode("latin-1")
    assert IDENTITY.patient_id in raw and IDENTITY.name in raw  # the scan finds what is there
    # a DICOM SEG belongs in the patient's record: it carries the patient and study modules the
    # standard requires, copied from the FLAIR instances, and nothing else identifying
    segs = [k for k in outputs if k.endswith("/seg.dcm")]
    for key in segs:
        seg = pydicom.dcmread(io.BytesIO(store.get(key)))
        assert seg.PatientID == IDENTITY.patient_id and "InstitutionName" not in seg
        assert IDENTITY.institution.lower() not in store.get(key).decode("latin-1").lower()
    places = {key: stored_text(store, key) for key in outputs if key not in segs}
    places["keys"] = "\n".join(outputs + incoming)
    places["xcom"] = json.dumps([plan, chunk, summary], default=str)
    places["logs"] = "\n".join(r.getMessage() for r in caplog.records)
    captured = capsys.readouterr()
    places["cli"] = captured.out + captured.err
    assert "dcm-" in places["cli"]
    leaks = [(where, value) for where, text in places.items() for value in secrets(good)
             if value.lower() in text.lower()]
    assert leaks == []
