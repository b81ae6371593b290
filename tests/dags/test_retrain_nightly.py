"""The nightly retraining DAG end to end with ``dag.test()``: SQLite Airflow, moto S3.

Each test uploads synthetic exports to a fresh bucket, runs the DAG once in this process and
checks the task states and what the run left in S3.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from brain_tumor import steps
from brain_tumor.devtools.synth import SynthReport, SynthSpec, make_export
from brain_tumor.ingest.exports import upload_export
from brain_tumor.settings import Settings
from brain_tumor.store.datasets import DatasetStore
from brain_tumor.store.storage import ObjectStore

DAG_ID = "retrain_nightly"
TASKS = ("find_new_exports", "ingest", "split", "train", "evaluate", "champion", "gate", "route",
         "promote", "reject")
AFTER_INGEST = TASKS[2:]
FIRST = SynthSpec(patients=12, slices=6, size=32, seed=1, bad=("corrupt",))
SECOND = SynthSpec(patients=4, slices=6, size=32, seed=2, first_patient=12)
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
    assert sorted(dag.task_ids) == sorted(TASKS)
    down = {t: dag.get_task(t).downstream_task_ids for t in TASKS}
    assert down["find_new_exports"] == {"ingest"} and down["ingest"] == {"split"}
    assert down["split"] == {"train", "evaluate"} and down["train"] == {"evaluate", "champion"}
    assert down["evaluate"] == {"gate"} and down["champion"] == {"gate"}
    assert down["route"] == {"promote", "reject"}
    assert type(dag.get_task("find_new_exports")).__name__ == "_ShortCircuitDecoratedOperator"
    assert type(dag.get_task("train")).__name__ == "TrainerBashOperator"  # the embedded default
    assert dag.get_task("train").pool == "brain_tumor_gpu"
    # the tasks that need TensorFlow go to the ML workers' queue, the rest to the default one
    queues = {t: dag.get_task(t).queue for t in TASKS}
    assert {t for t, q in queues.items() if q == "scoring"} == {"train", "evaluate", "gate"}
    assert {q for t, q in queues.items() if t not in ("train", "evaluate", "gate")} == {"default"}
    assert [a.name for a in dag.get_task("promote").outlets] == ["brain_tumor_champion"]
    assert not dag.get_task("reject").outlets
    assert dag.max_active_runs == 1


def test_first_export_trains_and_promotes_then_a_worse_model_is_rejected(
        get_dag: Callable[[str], Any], task_settings: Settings, exports: dict[str, SynthReport],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from brain_tumor.store.modelstore import ModelStore
    from brain_tumor.store.registry import Registry

    upload(task_settings, exports["export-001"], "export-001")

    dag_run, state, tasks = run_dag(get_dag(DAG_ID))

    assert state == "success", tasks
    assert tasks == {**dict.fromkeys(TASKS, "success"), "reject": "skipped"}
    store = ObjectStore.from_settings(task_settings)
    registry = Registry(store, task_settings)
    first = xcom(dag_run, "evaluate")["model_version"]
    assert registry.champion() == first
    event = registry.events()[-1]
    assert (event["action"], event["model_version"], event["run_id"]) == (
        "promoted", first, dag_run.run_id)
    gate = xcom(dag_run, "gate")
    assert gate["passed"] and gate["champion_version"] is None  # the first model: floors only
    assert {c["kind"] for c in gate["checks"]} == {"floor"}
    version = datasets(task_settings).head().version
    assert xcom(dag_run, "split")["dataset_version"] == version
    assert ModelStore(store, task_settings).record(first)["dataset_version"] == version
    assert store.exists(f"models/{first}/gate/{version}.json")

    # a new export and a deterministically worse training config (learning rate 0, seeded)
    upload(task_settings, exports["export-002"], "export-002")
    monkeypatch.setenv("BRAIN_TUMOR_LEARNING_RATE", "0")
    monkeypatch.setenv("BRAIN_TUMOR_SEG_LEARNING_RATE", "0")

    dag_run, state, tasks = run_dag(get_dag(DAG_ID))

    assert state == "success", tasks
    assert tasks == {**dict.fromkeys(TASKS, "success"), "promote": "skipped"}
    second = xcom(dag_run, "evaluate")["model_version"]
    assert second != first and registry.champion() == first  # the champion stays
    gate = xcom(dag_run, "gate")
    assert not gate["passed"] and gate["champion_version"] == first
    failed = [c for c in gate["checks"] if not c["passed"]]
    assert failed and any(c["kind"] == "no_regression" for c in failed)
    event = registry.events()[-1]
    assert (event["action"], event["model_version"]) == ("rejected", second)
    assert event["reason"] == gate["explanation"] and "champion" in event["reason"]
    new_version = datasets(task_settings).head().version
    # the champion was re-evaluated on the candidate's test patients
    assert ModelStore(store, task_settings).evaluation(first, new_version) is not None


def test_no_new_export_skips_the_rest_and_stays_green(
        get_dag: Callable[[str], Any], task_settings: Settings,
        exports: dict[str, SynthReport], caplog: pytest.LogCaptureFixture) -> None:
    upload(task_settings, exports["export-001"], "export-001")
    steps.ingest(task_settings, ["export-001"])
    head = datasets(task_settings).head()

    with caplog.at_level(logging.INFO):
        _, state, tasks = run_dag(get_dag(DAG_ID))

    assert state == "success"
    assert tasks == {"find_new_exports": "success", **dict.fromkeys(TASKS[1:], "skipped")}
    assert "no new exports" in caplog.text
    assert datasets(task_settings).head() == head


def test_failed_ingest_fails_the_run(get_dag: Callable[[str], Any], task_settings: Settings,
                                     exports: dict[str, SynthReport]) -> None:
    upload(task_settings, exports["export-bad"], "export-bad")

    _, state, tasks = run_dag(get_dag(DAG_ID))

    assert state == "failed"
    assert tasks == {"find_new_exports": "success", "ingest": "failed",
                     **dict.fromkeys(AFTER_INGEST, "upstream_failed")}
    assert datasets(task_settings).head().version is None
    assert datasets(task_settings).ledger() == {}
