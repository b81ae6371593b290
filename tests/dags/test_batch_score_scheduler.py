"""The scoring DAG's triggers fire with a running scheduler (``dag.test()`` ignores schedules).

A real deployment on loopback (API server, scheduler, DAG processor; LocalExecutor on SQLite),
the DAG unpaused with a one-minute cron: the scheduler starts a run by itself and it scores the
waiting studies; then an event on the champion asset (what `retrain_nightly`'s `promote`
emits) starts an asset-triggered run at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow_services import AirflowServices
from support import copy_model

from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.scoring.readers import upload_study
from brain_tumor.settings import settings_to_env
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.registry import Registry
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

pytestmark = pytest.mark.slow
DAG_ID = "batch_score"


def test_cron_and_champion_asset_start_runs(trained, make_settings, tmp_path: Path) -> None:
    settings = make_settings(batch_size=16, io_workers=4)
    source, record = trained
    champion = copy_model(source, record["model_version"], settings)
    store = ObjectStore.from_settings(settings)
    Registry(store, settings).promote(champion, reason="test champion")
    studies = [upload_study(IncomingStore(store, settings), folder)[0] for folder in make_studies(
        tmp_path / "studies", SynthSpec(patients=2, slices=4, size=32, seed=31))]
    env = {**settings_to_env(settings), "BRAIN_TUMOR_SCORING_SCHEDULE": "* * * * *"}

    with AirflowServices(tmp_path / "airflow", env=env) as airflow:
        airflow.unpause(DAG_ID)
        scheduled = airflow.wait_for_run(DAG_ID, run_type="scheduled", timeout=240)

        assert scheduled["state"] == "success", airflow.logs()
        for sid in studies:
            assert ScoreStore(store, settings).is_done(champion, sid)
        summary = store.get_json(ScoreStore(store, settings).batch_key(scheduled["dag_run_id"]))
        assert summary["trigger"] == "scheduled" and summary["studies_scored"] == 2
        mapped = [ti for ti in airflow.task_instances(DAG_ID, scheduled["dag_run_id"])
                  if ti["task_id"] == "score"]
        assert sorted(ti["map_index"] for ti in mapped) == [0]  # both in one chunk
        assert {ti["queue"] for ti in mapped} == {"scoring"}

        assets = airflow.api("GET", "assets", params={"name_pattern": "brain_tumor_champion"})
        asset_id = assets.json()["assets"][0]["id"]
        airflow.api_write("POST", "assets/events", json={"asset_id": asset_id}).raise_for_status()
        triggered = airflow.wait_for_run(DAG_ID, run_type="asset_triggered", timeout=180)

        assert triggered["state"] == "success", airflow.logs()
        summary = store.get_json(ScoreStore(store, settings).batch_key(triggered["dag_run_id"]))
        assert summary["trigger"] == "asset_triggered"
        assert (summary["studies_scored"], summary["studies_skipped"]) == (0, 2)
