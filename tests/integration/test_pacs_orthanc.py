"""A real PACS as scoring source and destination: Orthanc with its DICOMweb plugin on loopback.

Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``, installed by ``scripts/orthanc.sh``) runs
from a configuration in a temp folder, with a user and password. A synthetic DICOM study is
stored in it over STOW-RS; the pipeline finds it (QIDO-RS), waits until its instance count holds,
fetches it (WADO-RS) into incoming/, and, run as the ``batch_score`` DAG (``dag.test()``),
scores it and stores its DICOM SEG back in the PACS, in the same study. Without Orthanc the
tests fail under CI=true and skip elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
import requests
from support import copy_model, unavailable

from brain_tumor.devtools.orthanc import Orthanc, OrthancError
from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.devtools.synth_dicom import DicomSpec, study_uid, write_study
from brain_tumor.settings import Settings, load_settings, settings_to_env
from brain_tumor.store.ids import study_id_from_uid
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.pacs import Pacs, pull, seen_key
from brain_tumor.store.registry import Registry
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore
from brain_tumor_airflow.storage import DicomwebConnectionError, task_settings

DAG_ID = "batch_score"
CONN_ID = "pacs_test"
#: the session model was trained on this population: its tumors are found
TUMOR_STUDY = SynthSpec(patients=1, slices=6, size=32, seed=3, tumor_free_patients=0)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """An empty Orthanc with DICOMweb on a free loopback port, installed when missing."""
    try:
        server = Orthanc.installed(tmp_path / "orthanc")
    except OrthancError as exc:
        unavailable(f"Orthanc is not installed and scripts/orthanc.sh could not install it: "
                    f"{exc}")
    with server:
        yield server


@pytest.fixture(scope="module")
def tiff_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic TIFF study with tumor slices."""
    return make_studies(tmp_path_factory.mktemp("tiff"), TUMOR_STUDY)[0]


def pacs_settings(orthanc: Orthanc) -> dict[str, Any]:
    return {"scoring_source": "dicomweb", "dicomweb_url": orthanc.dicomweb_url,
            "dicomweb_username": orthanc.username, "dicomweb_password": orthanc.password}


def dicom_study(tiff: Path, out: Path, seed: str, study_date: str) -> list[pydicom.Dataset]:
    """The TIFF study as DICOM instances of its own Study Instance UID, dated study_date."""
    datasets = [pydicom.dcmread(p) for p in sorted(
        write_study(tiff, out, DicomSpec(uid_seed=seed)).rglob("*.dcm"))]
    for ds in datasets:
        ds.StudyDate = study_date
    return datasets


def stow(orthanc: Orthanc, datasets: list[pydicom.Dataset]) -> None:
    """Store instances in Orthanc over STOW-RS."""
    Pacs.from_settings(load_settings(env={}, **pacs_settings(orthanc))).client.store_instances(
        datasets)


def incoming_etags(store: ObjectStore, settings: Settings, sid: str) -> dict[str, str]:
    return {o.key: o.etag for o in store.list(IncomingStore(store, settings).prefix(sid))}


def test_a_study_is_fetched_once_its_instance_count_holds(
        orthanc: Orthanc, tiff_study: Path, make_settings: Callable[..., Settings],
        tmp_path: Path) -> None:
    settings = make_settings(**pacs_settings(orthanc), dicomweb_stable_minutes=10,
                             dicomweb_window_days=2)
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    t0 = datetime.now(UTC)
    today = f"{t0:%Y%m%d}"
    instances = dicom_study(tiff_study, tmp_path / "a", "pacs-stable", today)
    old = dicom_study(tiff_study, tmp_path / "old", "pacs-old", f"{t0 - timedelta(days=30):%Y%m%d}")
    uid = study_uid(DicomSpec(uid_seed="pacs-stable"))
    sid = study_id_from_uid(uid)
    flair = [ds for ds in instances if ds.SeriesDescription == "AX FLAIR"]
    stow(orthanc, flair + old)  # the FLAIR series first; the old study is outside the window

    def step(minutes: float) -> dict[str, int]:
        return pull(store, settings, "m-none", now=t0 + timedelta(minutes=minutes)).as_dict()

    listed = Pacs.from_settings(settings).candidates(2, t0)
    assert [(s.study_uid, s.study_id, s.instances) for s in listed] == [(uid, sid, len(flair))]
    assert step(0) == {"listed": 1, "due": 0, "arriving": 1, "done": 0, "present": 0,
                            "fetched": 0, "deferred": 0, "failed": 0}
    stow(orthanc, [ds for ds in instances if ds.SeriesDescription != "AX FLAIR"])
    report = step(11)  # stable for 11 minutes, but it has grown since: it starts over
    assert (report["arriving"], report["fetched"]) == (1, 0)
    assert sid not in IncomingStore(store, settings).states()
    report = step(21.5)
    assert (report["due"], report["fetched"]) == (1, 1)

    manifest = IncomingStore(store, settings).manifest(sid)
    assert manifest is not None and manifest["file_count"] == len(instances)
    assert {f["path"] for f in manifest["files"]} == {f"{ds.SOPInstanceUID}.dcm"
                                                      for ds in instances}
    before = incoming_etags(store, settings, sid)
    report = step(30)  # a re-run: fetched already, with the same instance count
    assert (report["due"], report["present"], report["fetched"]) == (1, 1, 0)
    assert incoming_etags(store, settings, sid) == before
    seen = store.get(seen_key(settings)).decode()
    assert sid in seen and uid not in seen  # the record is keyed by study id, names no UID


def test_wrong_credentials_are_refused(orthanc: Orthanc, make_settings: Callable[..., Settings]
                                       ) -> None:
    settings = make_settings(**{**pacs_settings(orthanc), "dicomweb_password": "wrong"})
    with pytest.raises(requests.HTTPError) as err:
        Pacs.from_settings(settings).candidates(1, datetime.now(UTC))
    assert err.value.response.status_code == 401


def test_airflow_connection_gives_url_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAIN_TUMOR_DICOMWEB_CONN_ID", CONN_ID)
    monkeypatch.setenv("BRAIN_TUMOR_DICOMWEB_URL", "http://unused.invalid/dicom-web")
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}",
                       "http://reader:s%3Acret@pacs.example:8042/dicom-web")
    resolved = task_settings()
    assert resolved.dicomweb_url == "http://pacs.example:8042/dicom-web"
    assert resolved.dicomweb_username == "reader"
    assert resolved.dicomweb_password.get_secret_value() == "s:cret"
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(
        {"conn_type": "http", "host": "pacs.example", "schema": "https", "port": 443,
         "login": "reader", "password": "other", "extra": {"path": "/orthanc/dicom-web/"}}))
    resolved = task_settings()
    assert resolved.dicomweb_url == "https://pacs.example:443/orthanc/dicom-web"
    assert resolved.dicomweb_password.get_secret_value() == "other"
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({"conn_type": "http"}))
    with pytest.raises(DicomwebConnectionError, match="gives no host"):
        task_settings()
    monkeypatch.delenv(f"AIRFLOW_CONN_{CONN_ID.upper()}")
    with pytest.raises(DicomwebConnectionError, match=f"'{CONN_ID}', which does not exist"):
        task_settings()


@pytest.mark.slow
def test_batch_score_answers_the_pacs_with_a_seg_in_the_same_study(
        orthanc: Orthanc, tiff_study: Path, trained, make_settings: Callable[..., Settings],
        get_dag: Callable[[str], Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(batch_size=16, io_workers=4, scoring_source="dicomweb",
                             dicomweb_stable_minutes=0, dicomweb_conn_id=CONN_ID)
    source, record = trained
    champion = copy_model(source, record["model_version"], settings)
    store = ObjectStore.from_settings(settings)
    Registry(store, settings).promote(champion, reason="test champion")
    for name, value in settings_to_env(settings).items():
        monkeypatch.setenv(name, value)
    user, password = orthanc.auth  # the tasks find the PACS through the Airflow connection
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}",
                       f"http://{user}:{password}@127.0.0.1:{orthanc.port}/dicom-web")
    instances = dicom_study(tiff_study, tmp_path / "e2e", "pacs-e2e",
                            f"{datetime.now(UTC):%Y%m%d}")
    uid = study_uid(DicomSpec(uid_seed="pacs-e2e"))
    sid = study_id_from_uid(uid)
    stow(orthanc, instances)

    dag = get_dag(DAG_ID)
    first = dag.test()
    assert str(first.state) == "success"
    plan = first.get_task_instance("plan").xcom_pull(task_ids="plan", key="batch")
    assert plan["pacs"]["fetched"] == 1 and plan["study_ids"] == [sid]
    scores = ScoreStore(store, settings)
    assert scores.is_done(champion, sid)
    summary = scores.summary(champion, sid)
    assert summary["dicom_seg"] == "seg.dcm", summary.get("mask_output_note")
    assert summary["pacs_sent"]

    pacs = Pacs.from_settings(load_settings(env={}, **pacs_settings(orthanc)))
    segs = pacs.instances(uid, modality="SEG")
    assert len(segs) == 1
    series_uid, sop_uid = (segs[0][tag]["Value"][0] for tag in ("0020000E", "00080018"))
    seg = hd.seg.Segmentation.from_dataset(pacs.client.retrieve_instance(uid, series_uid,
                                                                         sop_uid))
    assert seg.StudyInstanceUID == uid
    flair = {ds.SOPInstanceUID: ds.SeriesInstanceUID for ds in instances
             if ds.SeriesDescription == "AX FLAIR"}
    referenced = seg.get_source_image_uids()
    assert referenced and all(study == uid and flair.get(sop) == series
                              for study, series, sop in referenced)
    assert bytes(pacs.client.retrieve_instance(uid, series_uid, sop_uid).PixelData)
    assert store.get(scores.output_key(champion, sid, "seg.dcm"))

    second = dag.test()  # nothing new in the PACS: nothing fetched, nothing scored
    assert str(second.state) == "success"
    plan = second.get_task_instance("plan").xcom_pull(task_ids="plan", key="batch")
    assert (plan["pacs"]["due"], plan["pacs"]["done"], plan["pacs"]["fetched"]) == (1, 1, 0)
    assert plan["study_ids"] == []
    assert scores.batch(second.run_id)["studies_scored"] == 0
    assert len(pacs.instances(uid, modality="SEG")) == 1
