"""The nightly retraining DAG end to end with ``dag.test()``: SQLite Airflow, moto S3.

Each test uploads synthetic exports to a fresh bucket, runs the DAG once in this process and
checks the task states and what the run left in S3.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from brain_tumor import steps
from brain_tumor.datasets import DatasetStore
from brain_tumor.exports import upload_export
from brain_tumor.settings import Settings
from brain_tumor.storage import ObjectStore
from brain_tumor.synth import SynthReport, SynthSpec, make_export

DAG_ID = "retrain_nightly"
TASKS = ("find_new_exports", "ingest", "split")
FIRST = SynthSpec(patients=6, slices=4, size=32, seed=1, bad=("corrupt",))
SECOND = SynthSpec(patients=4, slices=4, size=32, seed=2, first_patient=6)
# 3 rejects among 4 items: over max_quarantine_fraction, so the ingest must fail
BROKEN = SynthSpec(patients=1, slices=1, size=32, seed=3, first_patient=20,
                   bad=("corrupt", "truncated", "uint16"))


@pytest.fixture(scope="session")
def exports(synth_root: Path) -> dict[str, SynthReport]:
    """Tiny synthetic exports: one with a corrupt image, one of new patients, one mostly broken."""
    return {"export-001": make_export(synth_root / "dag-export-001", FIRST),
            "export-002": make_export(synth_root / "dag-export-002", SECOND),
            "export-bad": make_export(synth_root / "dag-export-bad", BROKEN)}


def upload(settings: Settings, report: SynthReport, export_id: str) -> None:
    """Upload a synthetic export under export_id."""
    upload_export(steps.open_store(settings), settings, report.root, export_id)


def run_dag(dag: Any) -> tuple[Any, str, dict[str, str]]:
    """Run the DAG once in this process; the DagRun, its state and every task's state."""
    dag_run = dag.test()
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    return dag_run, str(dag_run.state), states


def xcom(dag_run: Any, task_id: str) -> Any:
    """What a task of the run returned (its ``return_value`` XCom)."""
    return dag_run.get_task_instance(task_id).xcom_pull(task_ids=task_id)


def datasets(settings: Settings) -> DatasetStore:
    """The dataset store of the settings' bucket."""
    return DatasetStore(ObjectStore.from_settings(settings), settings)


def test_dag_shape(get_dag: Callable[[str], Any]) -> None:
    dag = get_dag(DAG_ID)
    assert dag.task_ids == list(TASKS)
    assert dag.get_task("find_new_exports").downstream_task_ids == {"ingest"}
    assert dag.get_task("ingest").downstream_task_ids == {"split"}
    assert type(dag.get_task("find_new_exports")).__name__ == "_ShortCircuitDecoratedOperator"
    assert dag.max_active_runs == 1


def test_new_export_is_ingested_and_split(get_dag: Callable[[str], Any], task_settings: Settings,
                                          exports: dict[str, SynthReport]) -> None:
    upload(task_settings, exports["export-001"], "export-001")

    dag_run, state, tasks = run_dag(get_dag(DAG_ID))

    assert (state, tasks) == ("success", dict.fromkeys(TASKS, "success"))
    store = datasets(task_settings)
    version = store.head().version
    assert version is not None
    assert xcom(dag_run, "find_new_exports") == ["export-001"]
    ingested = xcom(dag_run, "ingest")
    assert ingested["dataset_version"] == version
    assert [e["export_id"] for e in ingested["exports"]] == ["export-001"]
    assert "quarantine" not in ingested["exports"][0]
    assert ingested["exports"][0]["accepted"] == FIRST.patients * FIRST.slices
    assert len(json.dumps(ingested)) < 1000
    assert xcom(dag_run, "split")["dataset_version"] == version
    assert store.record(version)["exports"] == ["export-001"]
    manifest = store.manifest(version)
    assert len(manifest) == FIRST.patients * FIRST.slices
    assert set(manifest["patient_id"]) == set(exports["export-001"].patients)
    split = store.split(version)
    assert set(split["patient_id"]) == set(exports["export-001"].patients)
    assert set(split["split"]) <= {"train", "val", "test"}
    quarantine = store.quarantine(version)
    assert set(quarantine["path"]) & set(exports["export-001"].bad_files), quarantine
    assert set(store.ledger()) == {"export-001"}


def test_no_new_export_skips_the_rest_and_stays_green(
        get_dag: Callable[[str], Any], task_settings: Settings,
        exports: dict[str, SynthReport], caplog: pytest.LogCaptureFixture) -> None:
    upload(task_settings, exports["export-001"], "export-001")
    steps.ingest(task_settings, ["export-001"])
    head = datasets(task_settings).head()

    with caplog.at_level(logging.INFO):
        _, state, tasks = run_dag(get_dag(DAG_ID))

    assert state == "success"
    assert tasks == {"find_new_exports": "success", "ingest": "skipped", "split": "skipped"}
    assert "no new exports" in caplog.text
    assert datasets(task_settings).head() == head


def test_second_export_makes_a_new_version_with_a_stable_split(
        get_dag: Callable[[str], Any], task_settings: Settings,
        exports: dict[str, SynthReport]) -> None:
    upload(task_settings, exports["export-001"], "export-001")
    first = steps.ingest(task_settings, ["export-001"])["dataset_version"]
    steps.split(task_settings, first)
    upload(task_settings, exports["export-002"], "export-002")

    dag_run, state, tasks = run_dag(get_dag(DAG_ID))

    assert (state, tasks) == ("success", dict.fromkeys(TASKS, "success"))
    store = datasets(task_settings)
    second = store.head().version
    assert second not in (None, first)
    assert store.record(second)["parent"] == first
    assert store.record(second)["exports"] == ["export-001", "export-002"]
    before = store.split(first).set_index("patient_id")["split"]
    after = store.split(second).set_index("patient_id")["split"]
    assert set(after.index) == set(exports["export-001"].patients) | set(
        exports["export-002"].patients)
    assert after[before.index].equals(before)
    assert xcom(dag_run, "find_new_exports") == ["export-002"]


def test_failed_ingest_fails_the_run(get_dag: Callable[[str], Any], task_settings: Settings,
                                     exports: dict[str, SynthReport]) -> None:
    upload(task_settings, exports["export-bad"], "export-bad")

    _, state, tasks = run_dag(get_dag(DAG_ID))

    assert state == "failed"
    assert tasks == {"find_new_exports": "success", "ingest": "failed",
                     "split": "upstream_failed"}
    assert datasets(task_settings).head().version is None
    assert datasets(task_settings).ledger() == {}
