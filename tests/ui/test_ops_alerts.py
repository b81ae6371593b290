"""Alert callbacks: the log line, the notifier settings, the alert text, and the DAG wiring.

Delivery by e-mail to a real SMTP server is in tests/integration/test_alert_delivery.py.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from brain_tumor_airflow import alerts, notifiers
from brain_tumor_airflow.notifiers import AlertConfig, compose, load_alert_config


@pytest.fixture(autouse=True, scope="module")
def _airflow_logging() -> None:
    """Airflow sets up logging when first imported: before caplog attaches, not within a test."""
    import airflow  # noqa: F401


@pytest.fixture(autouse=True)
def _no_alert_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFIERS", "SMTP_CONN_ID", "EMAIL_TO", "EMAIL_FROM", "SLACK_CONN_ID",
                 "SLACK_CHANNEL", "APPRISE_CONN_ID"):
        monkeypatch.delenv(f"BRAIN_TUMOR_ALERT_{name}", raising=False)
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)


def test_without_notifiers_the_log_line_is_the_alert(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=alerts.__name__):
        alert = alerts.send("run_failed", "it broke", dag_id="retrain_nightly", run_id="r-1",
                            task_id="train")
    assert alert["notified"] == []
    assert (alert["kind"], alert["dag_id"], alert["run_id"]) == ("run_failed",
                                                                 "retrain_nightly", "r-1")
    assert alert["details"] == {"task_id": "train"}
    assert alert["link"] == "/dags/retrain_nightly/runs/r-1"
    assert "brain-tumor alert [run_failed] it broke (dag retrain_nightly, run r-1)" in caplog.text


def test_the_link_is_absolute_with_the_api_base_url(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org/")
    assert alerts.run_url("batch_score", "manual__2026-03-03T10:00:00+00:00") == (
        "https://airflow.example.org/dags/batch_score/runs/manual__2026-03-03T10%3A00%3A00%2B00%3A00")
    assert alerts.run_url("batch_score", "cli") is None
    assert alerts.run_url(None, "r") is None


def test_load_alert_config_reads_the_variables() -> None:
    assert load_alert_config({}) == AlertConfig()
    config = load_alert_config({
        "BRAIN_TUMOR_ALERT_NOTIFIERS": " SMTP, slack,smtp ,",
        "BRAIN_TUMOR_ALERT_SMTP_CONN_ID": "mail_relay",
        "BRAIN_TUMOR_ALERT_EMAIL_TO": "a@example.org, b@example.org",
        "BRAIN_TUMOR_ALERT_EMAIL_FROM": "airflow@example.org",
        "BRAIN_TUMOR_ALERT_SLACK_CHANNEL": "#mri-ops",
    })
    assert config.notifiers == ("smtp", "slack")
    assert config.email_to == ("a@example.org", "b@example.org")
    assert (config.smtp_conn_id, config.email_from) == ("mail_relay", "airflow@example.org")
    assert (config.slack_conn_id, config.slack_channel) == ("slack_api_default", "#mri-ops")
    assert config.apprise_conn_id == "apprise_default"


@pytest.mark.parametrize(("env", "expected"), [
    ({"BRAIN_TUMOR_ALERT_NOTIFIERS": "smtp,pager"}, "received 'smtp,pager'"),
    ({"BRAIN_TUMOR_ALERT_NOTIFIERS": "smtp"}, "needs BRAIN_TUMOR_ALERT_EMAIL_TO"),
])
def test_load_alert_config_rejects_bad_settings(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        load_alert_config(env)


@pytest.mark.parametrize(("notifiers_setting", "expected"), [
    ("smtp", "the alert notifiers are misconfigured"),  # no recipients
    ("pager", "the alert notifiers are misconfigured"),
    ("slack", "the slack notifier failed"),  # no provider or no connection here
    ("apprise", "the apprise notifier failed"),
])
def test_a_failing_or_wrong_notifier_is_logged_not_raised(monkeypatch, caplog,
                                                          notifiers_setting: str,
                                                          expected: str) -> None:
    monkeypatch.setenv("BRAIN_TUMOR_ALERT_NOTIFIERS", notifiers_setting)
    with caplog.at_level(logging.WARNING):
        alert = alerts.model_rejected({"model_version": "m-2", "previous_champion": "m-1",
                                       "reason": "r", "run_id": "manual__1"})
    assert alert["notified"] == []
    assert expected in caplog.text, caplog.text
    assert "brain-tumor alert [model_rejected]" in caplog.text


def test_compose_says_what_where_and_research_use_only() -> None:
    alert = {"kind": "studies_quarantined", "message": "scoring run r-9 quarantined 2 studies",
             "dag_id": "batch_score", "run_id": "r-9", "link": "https://a.example/x?y=1&z=2",
             "at": "2026-03-03T10:12:00+00:00",
             "details": {"studies": ["s1", "<s2>"], "count": 2, "model_version": None}}
    message = compose(alert)
    assert message["subject"] == "[brain-tumor] studies quarantined: batch_score run r-9"
    assert "Run: r-9" in message["text"] and "studies: s1, <s2>" in message["text"]
    assert "model_version" not in message["text"]
    assert message["text"].endswith(notifiers.NOTICE)
    assert "&lt;s2&gt;" in message["html"] and "<s2>" not in message["html"]
    assert 'href="https://a.example/x?y=1&amp;z=2"' in message["html"]
    assert notifiers.NOTICE in message["html"]
    no_run = compose({**alert, "run_id": None, "dag_id": None})
    assert no_run["subject"] == "[brain-tumor] studies quarantined: unknown DAG"


def test_dag_failure_callback() -> None:
    run = SimpleNamespace(dag_id="retrain_nightly", run_id="scheduled__x")
    ti = SimpleNamespace(task_id="train")
    alert = alerts.on_dag_failure({"dag_run": run, "ti": ti})
    assert alert["kind"] == alerts.RUN_FAILED and alert["run_id"] == "scheduled__x"
    assert alert["message"] == "retrain_nightly run scheduled__x failed: task train failed"
    assert alert["details"] == {"task_id": "train", "reason": "task train failed"}


def test_model_rejected() -> None:
    alert = alerts.model_rejected({"model_version": "m-2", "previous_champion": "m-1",
                                   "reason": "roc_auc 0.7 < floor 0.85", "dataset_version": "d",
                                   "run_id": "r"})
    assert "m-2 rejected; champion stays m-1" in alert["message"]
    assert (alert["dag_id"], alert["run_id"]) == ("retrain_nightly", "r")


def test_scoring_summary_alerts_only_on_quarantine() -> None:
    summary = {"run_id": "r1", "model_version": "m-1", "studies_quarantined": 2,
               "quarantined": [{"study_id": "s1"}, {"study_id": "s2"}]}
    ti = SimpleNamespace(task_id="summarize", xcom_pull=lambda task_ids: {
        "summarize": summary}[task_ids])
    alert = alerts.on_scoring_summary({"ti": ti})
    assert alert["details"]["studies"] == ["s1", "s2"]
    assert (alert["dag_id"], alert["run_id"]) == ("batch_score", "r1")
    assert alerts.scoring_quarantine({**summary, "studies_quarantined": 0}) is None
    assert alerts.scoring_quarantine(None) is None


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
