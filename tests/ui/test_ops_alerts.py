"""Alert callbacks: the log line, the configurable notifier, and their wiring into the DAGs."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from brain_tumor_airflow import alerts

RECEIVED: list[dict[str, Any]] = []
HERE = __name__


def record(alert: dict[str, Any]) -> None:
    """A notifier for the tests: keeps what it gets."""
    RECEIVED.append(alert)


def explode(alert: dict[str, Any]) -> None:
    raise RuntimeError("notifier down")


@pytest.fixture(autouse=True)
def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    RECEIVED.clear()
    monkeypatch.setenv("BRAIN_TUMOR_ALERT_NOTIFIER", f"{HERE}:record")


def test_send_logs_and_notifies_the_configured_callable(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=alerts.__name__):
        alert = alerts.send("run_failed", "it broke", dag_id="retrain_nightly")
    assert RECEIVED == [alert]
    assert alert["kind"] == "run_failed" and alert["details"] == {"dag_id": "retrain_nightly"}
    assert "brain-tumor alert [run_failed] it broke" in caplog.text


def test_without_a_notifier_only_the_log_line(monkeypatch, caplog) -> None:
    monkeypatch.delenv("BRAIN_TUMOR_ALERT_NOTIFIER")
    with caplog.at_level(logging.WARNING, logger=alerts.__name__):
        alerts.send("run_failed", "quiet")
    assert RECEIVED == [] and "[run_failed] quiet" in caplog.text


def test_a_failing_or_wrong_notifier_is_logged_not_raised(monkeypatch, caplog) -> None:
    for path, expected in ((f"{HERE}:explode", "notifier down"),
                           ("no_such_module_xyz:f", "cannot be imported"),
                           (f"{HERE}:HERE", "not a callable"), ("nodots", "package.module")):
        monkeypatch.setenv("BRAIN_TUMOR_ALERT_NOTIFIER", path)
        caplog.clear()
        alerts.send("model_rejected", "m")
        assert expected in caplog.text, (path, caplog.text)
    assert alerts.load_notifier(f"{HERE}.record") is record  # dotted form works too


def test_dag_failure_callback() -> None:
    run = SimpleNamespace(dag_id="retrain_nightly", run_id="scheduled__x")
    alert = alerts.on_dag_failure({"dag_run": run, "reason": "task_failure"})
    assert RECEIVED == [alert] and alert["kind"] == alerts.RUN_FAILED
    assert alert["details"]["run_id"] == "scheduled__x"
    assert "retrain_nightly run scheduled__x failed: task_failure" in alert["message"]


def test_model_rejected() -> None:
    alert = alerts.model_rejected({"model_version": "m-2", "previous_champion": "m-1",
                                   "reason": "roc_auc 0.7 < floor 0.85", "dataset_version": "d",
                                   "run_id": "r"})
    assert RECEIVED == [alert] and "m-2 rejected; champion stays m-1" in alert["message"]


def test_scoring_summary_alerts_only_on_quarantine() -> None:
    summary = {"run_id": "r1", "model_version": "m-1", "studies_quarantined": 2,
               "quarantined": [{"study_id": "s1"}, {"study_id": "s2"}]}
    ti = SimpleNamespace(task_id="summarize", xcom_pull=lambda task_ids: {
        "summarize": summary}[task_ids])
    alert = alerts.on_scoring_summary({"ti": ti})
    assert RECEIVED == [alert] and alert["details"]["studies"] == ["s1", "s2"]
    assert alerts.scoring_quarantine({**summary, "studies_quarantined": 0}) is None
    assert alerts.scoring_quarantine(None) is None and len(RECEIVED) == 1


def _names(callbacks: Any) -> set[str]:
    items = callbacks if isinstance(callbacks, list | tuple) else [callbacks]
    return {f"{c.__module__}.{c.__name__}" for c in items if c is not None}


def test_callbacks_are_wired_into_the_dags(dagbag) -> None:
    assert not dagbag.import_errors, dagbag.import_errors
    for dag_id in ("retrain_nightly", "batch_score"):
        assert "brain_tumor_airflow.alerts.on_dag_failure" in _names(
            dagbag.dags[dag_id].on_failure_callback), dag_id
    summarize = dagbag.dags["batch_score"].get_task("summarize")
    assert "brain_tumor_airflow.alerts.on_scoring_summary" in _names(summarize.on_success_callback)
