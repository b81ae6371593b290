"""Fixtures for DAG tests: Airflow's metadata DB (SQLite, migrated once), DAGs, settings in env.

The session's Airflow home, SQLite URL and dags folder come from ``tests/conftest.py``
(``pytest_configure``); tasks run by ``dag.test()`` run in this process and read their settings
from ``BRAIN_TUMOR_*`` environment variables, as a worker would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from brain_tumor.settings import Settings
from support import TINY_TRAINING

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
AIRFLOW = Path(sys.executable).parent / "airflow"


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's metadata DB migrated (``airflow db migrate``, idempotent) once per session."""
    proc = subprocess.run([str(AIRFLOW), "db", "migrate"], capture_output=True, text=True,
                          timeout=300, env=os.environ.copy())
    if proc.returncode != 0:
        pytest.fail(f"`airflow db migrate` failed ({proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    proc = subprocess.run([str(AIRFLOW), "pools", "set", "brain_tumor_gpu", "1", "GPUs for training"],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    if proc.returncode != 0:
        pytest.fail(f"`airflow pools set` failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


@pytest.fixture(scope="session")
def dagbag() -> Any:
    """Every DAG in dags/, parsed the way the DAG processor parses them."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture
def get_dag(dagbag: Any, airflow_db: None) -> Callable[[str], Any]:
    """A DAG by id, freshly parsed and without retries, for ``dag.test()`` (failures fail fast)."""
    from airflow.dag_processing.dagbag import DagBag

    def get(dag_id: str) -> Any:
        assert not dagbag.import_errors, dagbag.import_errors
        fresh = DagBag(dag_folder=dagbag.dags[dag_id].fileloc)
        dag = fresh.dags[dag_id]
        for t in dag.tasks:
            t.retries = 0
        return dag

    return get


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``BRAIN_TUMOR_*`` variables that make ``load_settings()`` return these settings."""
    values = settings.model_dump(mode="json")
    values["s3_secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
    return {f"BRAIN_TUMOR_{k.upper()}": "" if v is None else str(v) for k, v in values.items()}


@pytest.fixture
def task_settings(make_settings: Callable[..., Settings],
                  monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with a fresh moto bucket, also put in the environment for the DAG's tasks."""
    from brain_tumor.settings import load_settings

    settings = make_settings(**{**TINY_TRAINING, "epochs": 12, "seg_epochs": 12, "batch_size": 8},
                             gate_min_sensitivity=0.2, gate_min_roc_auc=0.7, gate_min_dice=0.05)
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    assert load_settings() == settings
    return settings
