"""The ops pages under test: a filled bucket and an Airflow API server with the plugin."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import TINY_TRAINING

from brain_tumor.settings import Settings, load_settings, settings_to_env

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output" / "ui"
ACCESS_KEY, SECRET_KEY = "OPSTESTACCESSKEY0001", "ops-test-secret-do-not-leak-0001"


@pytest.fixture(scope="session")
def ops_settings(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of the ops bucket (distinct credentials, so a leak would be recognizable)."""
    return load_settings(env={}, s3_endpoint_url=moto_endpoint, s3_bucket="ops-ui-session",
                         s3_access_key_id=ACCESS_KEY, s3_secret_access_key=SECRET_KEY,
                         home=tmp_path_factory.mktemp("ops-home"), **TINY_TRAINING)


@pytest.fixture(scope="session")
def filled(ops_settings: Settings, trained, tmp_path_factory: pytest.TempPathFactory):
    """The ops bucket filled by the pipeline's own steps (ops_fill.fill)."""
    from ops_fill import fill

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    return fill(ops_settings, trained, tmp_path_factory.mktemp("ops-fill"))


@pytest.fixture(scope="session")
def ops_server(filled, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """An Airflow API server (with the plugin) reading the filled bucket; one failed retrain run
    in its database. Yields the AirflowServices."""
    from airflow_services import AirflowServices, airflow_available

    if not airflow_available():
        pytest.fail("the airflow CLI is not installed next to this Python")
    services = AirflowServices(tmp_path_factory.mktemp("ops-airflow"),
                               env=settings_to_env(filled.settings),
                               components=(("api-server",),))
    try:
        services.start()
        services.airflow("dags", "reserialize")
        run_id = services.trigger("retrain_nightly")
        services.api("PATCH", f"dags/retrain_nightly/dagRuns/{run_id}",
                     json={"state": "failed"}).raise_for_status()
        services.failed_run_id = run_id  # type: ignore[attr-defined]
        yield services
    finally:
        services.stop()
