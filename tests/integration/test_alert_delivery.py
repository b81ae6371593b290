"""Alerts by e-mail: the DAGs' own callbacks, SmtpNotifier and a real SMTP server on loopback.

The SMTP server is aiosmtpd's; Airflow finds it through an ``AIRFLOW_CONN_<ID>`` connection in
JSON form, exactly as a deployment would configure it.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
from collections.abc import Iterator
from email.message import EmailMessage
from types import SimpleNamespace
from typing import Any

import pytest
from support import free_port

from brain_tumor_airflow import alerts

CONN_ID = "brain_tumor_alerts_smtp"
RECIPIENTS = ["ml-ops@example.org", "radiology-research@example.org"]
SENDER = "airflow@example.org"
BASE_URL = "http://airflow.example.org:8080"
NOTICE = "Research use only"


class Inbox:
    """aiosmtpd handler keeping every message it accepts, with its envelope recipients."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content or envelope.content,
                                           policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[tuple[int, Inbox]]:
    """An SMTP server on a free loopback port for this module."""
    from aiosmtpd.controller import Controller

    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


def _connection(port: int) -> str:
    """An Airflow SMTP connection in JSON form: plain SMTP on loopback, no retries."""
    return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                       "extra": {"from_email": SENDER, "disable_ssl": True, "disable_tls": True,
                                 "timeout": 10, "retry_limit": 0}})


@pytest.fixture
def inbox(smtp_server: tuple[int, Inbox], monkeypatch: pytest.MonkeyPatch) -> Inbox:
    """The alert settings pointing at the SMTP server; its inbox, emptied."""
    port, box = smtp_server
    box.messages.clear()
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", _connection(port))
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE_URL)
    monkeypatch.setenv("BRAIN_TUMOR_ALERT_NOTIFIERS", "smtp")
    monkeypatch.setenv("BRAIN_TUMOR_ALERT_SMTP_CONN_ID", CONN_ID)
    monkeypatch.setenv("BRAIN_TUMOR_ALERT_EMAIL_TO", ", ".join(RECIPIENTS))
    return box


def _failure_callbacks(dag: Any) -> list[Any]:
    callbacks = dag.on_failure_callback
    return list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]


def _only_message(box: Inbox) -> tuple[list[str], EmailMessage, str]:
    """The one delivered message: envelope recipients, the message, its HTML body."""
    assert len(box.messages) == 1, [m["Subject"] for _, m in box.messages]
    recipients, message = box.messages[0]
    return recipients, message, message.get_body(("html",)).get_content()


def _check_common(recipients: list[str], message: EmailMessage, body: str) -> None:
    assert sorted(recipients) == sorted(RECIPIENTS)
    assert message["From"] == SENDER
    assert {a.addr_spec for a in message["To"].addresses} == set(RECIPIENTS)
    assert NOTICE in body


@pytest.mark.parametrize("dag_id", ["retrain_nightly", "batch_score"])
def test_a_failed_run_is_mailed(dag_id: str, inbox: Inbox, dagbag: Any) -> None:
    dag = dagbag.dags[dag_id]
    run_id = "scheduled__2026-03-02T02:00:00+00:00"
    # the context the DAG processor builds for a DAG failure callback without a last task
    context = {"dag": dag, "run_id": run_id, "reason": "task_failure"}
    returned = [callback(context) for callback in _failure_callbacks(dag)]
    alert = next(a for a in returned if isinstance(a, dict) and a.get("kind") == alerts.RUN_FAILED)
    assert alert["notified"] == ["smtp"]

    recipients, message, body = _only_message(inbox)
    _check_common(recipients, message, body)
    assert message["Subject"] == f"[brain-tumor] run failed: {dag_id} run {run_id}"
    assert f"{dag_id} run {run_id} failed: task_failure" in body
    link = f"{BASE_URL}/dags/{dag_id}/runs/scheduled__2026-03-02T02%3A00%3A00%2B00%3A00"
    assert f'href="{link}"' in body


def test_a_rejected_candidate_is_mailed(inbox: Inbox) -> None:
    run_id = "manual__2026-03-03T09:15:00+00:00"
    event = {"seq": 7, "action": "rejected", "model_version": "m-20260303-0915",
             "previous_champion": "m-20260301-0200", "dataset_version": "d-20260303-0900",
             "reason": "sensitivity 0.71 < floor 0.80", "metrics": None, "run_id": run_id,
             "at": "2026-03-03T09:40:00Z"}
    alert = alerts.model_rejected(event)  # what retrain_nightly's reject task calls
    assert alert["notified"] == ["smtp"]

    recipients, message, body = _only_message(inbox)
    _check_common(recipients, message, body)
    assert message["Subject"] == f"[brain-tumor] model rejected: retrain_nightly run {run_id}"
    assert run_id in body and "m-20260303-0915 rejected; champion stays m-20260301-0200" in body
    assert "sensitivity 0.71 &lt; floor 0.80" in body  # HTML-escaped, not dropped


def _summarize_callbacks(dag: Any, run_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Run the summarize task's success callbacks on a batch summary; the first alert sent."""
    ti = SimpleNamespace(task_id="summarize", dag_id="batch_score", run_id=run_id,
                         xcom_pull=lambda task_ids: {"summarize": summary}[task_ids])
    callbacks = dag.get_task("summarize").on_success_callback
    context = {"dag": dag, "ti": ti, "task_instance": ti, "run_id": run_id}
    returned = [c(context) for c in (callbacks if isinstance(callbacks, list) else [callbacks])]
    return next(a for a in returned if isinstance(a, dict))


def test_quarantined_studies_are_mailed(inbox: Inbox, dagbag: Any) -> None:
    dag = dagbag.dags["batch_score"]
    run_id = "scheduled__2026-03-03T10:10:00+00:00"
    summary = {"run_id": run_id, "model_version": "m-20260301-0200", "studies_quarantined": 2,
               "quarantined": [{"study_id": "TCGA_CS_4941_19960909", "reason": "corrupt"},
                               {"study_id": "{{ 7 * 7 }}", "reason": "bad name"}]}
    alert = _summarize_callbacks(dag, run_id, summary)
    assert alert["kind"] == alerts.STUDIES_QUARANTINED and alert["notified"] == ["smtp"]

    recipients, message, body = _only_message(inbox)
    _check_common(recipients, message, body)
    assert message["Subject"] == f"[brain-tumor] studies quarantined: batch_score run {run_id}"
    assert run_id in body and "TCGA_CS_4941_19960909" in body
    assert "{{ 7 * 7 }}" in body  # data is never rendered as a template


def test_flagged_studies_and_drift_are_mailed(inbox: Inbox, dagbag: Any) -> None:
    dag = dagbag.dags["batch_score"]
    run_id = "scheduled__2026-03-04T10:10:00+00:00"
    reason = {"statistic": "input_distance", "value": 41.2, "bound": 6.3, "slices_over": 1.0}
    summary = {"run_id": run_id, "model_version": "m-20260301-0200", "studies_quarantined": 0,
               "quarantined": [], "studies_out_of_distribution": 1,
               "out_of_distribution": [{"study_id": "CT_HEAD_0042", "ood_score": 6.5,
                                        "reasons": [reason]}],
               "drift": {"psi_bound": 0.25, "ood_score": {"psi": 0.1, "ks": 0.2, "n": 12},
                         "probability": {"psi": 1.7, "ks": 0.6, "n": 240},
                         "exceeded": ["probability"]}}
    alert = _summarize_callbacks(dag, run_id, summary)
    assert alert["kind"] == alerts.STUDIES_OUT_OF_DISTRIBUTION and alert["notified"] == ["smtp"]

    subjects = {m["Subject"]: (r, m) for r, m in inbox.messages}
    assert sorted(subjects) == [f"[brain-tumor] scoring drift: batch_score run {run_id}",
                                f"[brain-tumor] studies out of distribution: batch_score run "
                                f"{run_id}"]
    for recipients, message in subjects.values():
        _check_common(recipients, message, message.get_body(("html",)).get_content())
    flagged = subjects[f"[brain-tumor] studies out of distribution: batch_score run {run_id}"][1]
    assert "CT_HEAD_0042" in flagged.get_body(("html",)).get_content()
    drifted = subjects[f"[brain-tumor] scoring drift: batch_score run {run_id}"][1]
    body = drifted.get_body(("html",)).get_content()
    assert "probability PSI 1.7" in body and "ood_score PSI" not in body
    # a batch with neither sends nothing
    inbox.messages.clear()
    assert alerts.scoring_alerts({**summary, "studies_out_of_distribution": 0,
                                  "drift": {**summary["drift"], "exceeded": []}}) == []
    assert inbox.messages == []


def test_a_down_smtp_server_is_logged_not_raised(monkeypatch, caplog, dagbag: Any) -> None:
    nobody = free_port()
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", _connection(nobody))
    monkeypatch.setenv("BRAIN_TUMOR_ALERT_NOTIFIERS", "smtp")
    monkeypatch.setenv("BRAIN_TUMOR_ALERT_SMTP_CONN_ID", CONN_ID)
    monkeypatch.setenv("BRAIN_TUMOR_ALERT_EMAIL_TO", RECIPIENTS[0])
    dag = dagbag.dags["retrain_nightly"]
    with caplog.at_level(logging.WARNING):
        alert = alerts.on_dag_failure({"dag": dag, "run_id": "scheduled__x",
                                       "reason": "timed_out"})
    assert alert["notified"] == []
    assert "brain-tumor alert [run_failed] retrain_nightly run scheduled__x failed" in caplog.text
    failed = [r for r in caplog.records if "the smtp notifier failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None
    assert isinstance(failed[0].exc_info[1], ConnectionRefusedError)
