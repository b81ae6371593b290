"""Run controls: the DAGs' params for manual runs, execution and run timeouts.

Manual runs go through ``dag.test(run_conf=...)`` on SQLite Airflow against moto S3, with the
fixtures and helpers of ``test_retrain_nightly.py`` and ``test_batch_score.py``.
"""
# ruff: noqa: F811 (the fixtures imported from those modules come back as test parameters)

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from support import copy_model
from test_batch_score import output, scoring, study_folders, submit, summary_of  # noqa: F401
from test_retrain_nightly import TASKS, datasets, exports, upload, xcom  # noqa: F401

from brain_tumor import steps
from brain_tumor.settings import Settings
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.registry import Registry
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

# what comes after training: marked successful instead of run where a test is about the input
AFTER_TRAIN = "evaluate|champion|gate|route|promote|reject"


def run(dag: Any, conf: dict[str, Any], skip: str | None = None) -> tuple[Any, str, dict]:
    """One manual run with this conf; the DagRun, its state and each task's states."""
    dag_run = dag.test(run_conf=conf, mark_success_pattern=skip)
    states: dict[str, list[str]] = {}
    for ti in sorted(dag_run.get_task_instances(), key=lambda t: (t.task_id, t.map_index)):
        states.setdefault(ti.task_id, []).append(str(ti.state))
    return dag_run, str(dag_run.state), states


# --- timeouts ---

def test_every_task_has_an_execution_timeout_and_every_dag_a_dagrun_timeout(dagbag: Any) -> None:
    for dag in dagbag.dags.values():
        assert dag.dagrun_timeout is not None, dag.dag_id
        assert {t.task_id: t.execution_timeout for t in dag.tasks if not t.execution_timeout} \
            == {}, dag.dag_id
    retrain = dagbag.dags["retrain_nightly"]
    train = retrain.get_task("train").execution_timeout
    assert train == timedelta(minutes=720)  # BRAIN_TUMOR_TRAIN_TIMEOUT_MINUTES' default
    assert retrain.dagrun_timeout == timedelta(minutes=1320) > train
    assert dagbag.dags["batch_score"].dagrun_timeout == timedelta(minutes=180)


# --- params ---

def test_params_have_defaults_that_are_the_scheduled_run(dagbag: Any) -> None:
    assert dagbag.dags["retrain_nightly"].params.dump() == {"dataset_version": None,
                                                            "retrain_head": False}
    assert dagbag.dags["batch_score"].params.dump() == {"study_ids": None, "model_version": None}


@pytest.mark.parametrize(("dag_id", "conf", "param"), [
    ("retrain_nightly", {"retrain_head": "yes"}, "retrain_head"),
    ("retrain_nightly", {"dataset_version": ""}, "dataset_version"),
    ("batch_score", {"study_ids": "study-1"}, "study_ids"),
    ("batch_score", {"study_ids": []}, "study_ids"),
    ("batch_score", {"model_version": 3}, "model_version"),
])
def test_a_bad_param_value_is_refused(get_dag: Callable[[str], Any], dag_id: str,
                                      conf: dict[str, Any], param: str) -> None:
    with pytest.raises(ValueError, match=f"Invalid input for param {param}"):
        get_dag(dag_id).test(run_conf=conf)


def test_retrain_on_a_given_dataset_version_takes_no_export_in(
        get_dag: Callable[[str], Any], task_settings: Settings,
        exports: dict[str, Any]) -> None:
    upload(task_settings, exports["export-001"], "export-001")
    version = steps.ingest(task_settings, ["export-001"])["dataset_version"]
    upload(task_settings, exports["export-002"], "export-002")  # new: a scheduled run takes it in

    dag_run, state, tasks = run(get_dag("retrain_nightly"), {"dataset_version": version},
                                skip=AFTER_TRAIN)

    assert state == "success", tasks
    assert tasks == {t: ["success"] for t in TASKS}
    assert xcom(dag_run, "split")["dataset_version"] == version
    model = ModelStore(ObjectStore.from_settings(task_settings), task_settings)
    trained = [v for v in model.versions() if model.record(v)["dataset_version"] == version]
    assert trained == [steps.expected_model_version(task_settings, version)]
    assert set(datasets(task_settings).ledger()) == {"export-001"}  # export-002 waits
    assert datasets(task_settings).head().version == version


def test_retrain_head_retrains_when_no_export_is_new(
        get_dag: Callable[[str], Any], task_settings: Settings,
        exports: dict[str, Any]) -> None:
    upload(task_settings, exports["export-001"], "export-001")
    head = steps.ingest(task_settings, ["export-001"])["dataset_version"]

    _, state, tasks = run(get_dag("retrain_nightly"), {})  # the scheduled run: nothing to do
    assert state == "success"
    assert tasks == {"find_new_exports": ["success"], **{t: ["skipped"] for t in TASKS[1:]}}

    dag_run, state, tasks = run(get_dag("retrain_nightly"), {"retrain_head": True},
                                skip=f"train|{AFTER_TRAIN}")

    assert state == "success", tasks
    assert tasks == {t: ["success"] for t in TASKS}
    assert xcom(dag_run, "split")["dataset_version"] == head
    assert set(datasets(task_settings).ledger()) == {"export-001"}


def test_retrain_refuses_both_params_and_an_unknown_dataset_version(
        get_dag: Callable[[str], Any], task_settings: Settings,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    _, state, tasks = run(get_dag("retrain_nightly"),
                          {"dataset_version": "ds-1", "retrain_head": True})
    assert state == "failed" and tasks["find_new_exports"] == ["failed"]
    assert "dataset_version and retrain_head exclude each other" in output(caplog, capfd)

    _, state, tasks = run(get_dag("retrain_nightly"), {"dataset_version": "no-such-version"})
    assert state == "failed"
    assert (tasks["find_new_exports"], tasks["ingest"], tasks["split"]) == (
        ["success"], ["success"], ["failed"])
    assert "dataset version 'no-such-version' does not exist" in output(caplog, capfd)


def test_scoring_only_the_given_studies(get_dag: Callable[[str], Any], scoring,
                                        study_folders) -> None:
    settings, store = scoring
    ids = submit(store, settings, study_folders["good"])
    champion = Registry(store, settings).champion()

    dag_run, state, tasks = run(get_dag("batch_score"), {"study_ids": [ids[1]]})

    assert state == "success", tasks
    assert tasks == {"plan": ["success"], "score": ["success"], "summarize": ["success"]}
    summary = summary_of(store, settings, dag_run)
    assert (summary["studies_planned"], summary["studies_scored"]) == (1, 1)
    scores = ScoreStore(store, settings)
    assert [sid for sid in ids if scores.is_done(champion, sid)] == [ids[1]]


def test_scoring_with_a_given_model_version(get_dag: Callable[[str], Any], scoring,
                                            study_folders, trained) -> None:
    settings, store = scoring
    ids = submit(store, settings, study_folders["good"][:2])
    champion = Registry(store, settings).champion()
    other = copy_model(trained[0], trained[1]["model_version"], settings, as_version="m-other")

    dag_run, state, _ = run(get_dag("batch_score"), {"model_version": other,
                                                     "study_ids": [ids[0]]})

    assert state == "success"
    summary = summary_of(store, settings, dag_run)
    assert summary["model_version"] == other and summary["studies_scored"] == 1
    scores = ScoreStore(store, settings)
    assert scores.is_done(other, ids[0]) and not scores.is_done(other, ids[1])
    assert not scores.is_done(champion, ids[0])
    assert Registry(store, settings).champion() == champion  # scoring promotes nothing


def test_scoring_refuses_unknown_studies_and_models_without_retrying(
        get_dag: Callable[[str], Any], scoring,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    _, state, tasks = run(get_dag("batch_score"), {"model_version": "m-nowhere"})
    assert state == "failed"
    assert tasks == {"plan": ["failed"], "score": ["upstream_failed"], "summarize": ["failed"]}
    assert "model version 'm-nowhere' does not exist" in output(caplog, capfd)

    _, state, tasks = run(get_dag("batch_score"), {"study_ids": ["no-such-study"]})
    assert state == "failed" and tasks["plan"] == ["failed"]
    assert "no such studies under incoming/: received ['no-such-study']" in output(caplog, capfd)
