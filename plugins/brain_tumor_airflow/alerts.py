"""Alerts of the brain-tumor pipeline, as Airflow callbacks: a log line and Airflow notifiers.

``send`` logs one WARNING line (``brain-tumor alert [<kind>] ...``) and hands the alert to the
notifiers that ``BRAIN_TUMOR_ALERT_NOTIFIERS`` names (e-mail through the SMTP provider's
``SmtpNotifier``, Slack, Apprise; see ``notifiers``); unset, the log line is the whole alert. An
alert says what happened, where (DAG, run id, a link to the run) and that the pipeline is for
research use only. A notifier that fails is logged with its traceback and does not fail the task
or callback that raised the alert.

Hooks:

- ``on_dag_failure``: a DAG-level ``on_failure_callback`` (retrain_nightly, batch_score).
- ``model_rejected``: called by retrain_nightly's ``reject`` task with the registry event.
- ``on_scoring_summary``: an ``on_success_callback`` of batch_score's ``summarize`` task; alerts
  when the batch quarantined studies (``scoring_quarantine`` does the same from a summary dict),
  when it flagged studies out of distribution (``scoring_out_of_distribution``) and when its
  drift passed the PSI bound (``scoring_drift``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from brain_tumor_airflow.notifiers import deliver
from brain_tumor_airflow.ui.status import RETRAIN_DAG, SCORING_DAG, run_link

log = logging.getLogger(__name__)

RUN_FAILED, MODEL_REJECTED, STUDIES_QUARANTINED = "run_failed", "model_rejected", \
    "studies_quarantined"
STUDIES_OUT_OF_DISTRIBUTION, SCORING_DRIFT = "studies_out_of_distribution", "scoring_drift"


def run_url(dag_id: str | None, run_id: str | None) -> str | None:
    """The Airflow UI page of a run, absolute when ``[api] base_url`` is set (None without one)."""
    path = run_link(dag_id, run_id) if dag_id else None
    if path is None:
        return None
    from airflow.sdk import conf

    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    return base + path


def send(kind: str, message: str, *, dag_id: str | None = None, run_id: str | None = None,
         context: Any = None, **details: Any) -> dict[str, Any]:
    """Log the alert and hand it to the configured notifiers (with the callback's context)."""
    alert = {"kind": kind, "message": message, "dag_id": dag_id, "run_id": run_id,
             "link": run_url(dag_id, run_id), "details": details,
             "at": datetime.now(UTC).isoformat(timespec="seconds")}
    log.warning("brain-tumor alert [%s] %s (dag %s, run %s) %s", kind, message, dag_id, run_id,
                details)
    alert["notified"] = deliver(alert, context)
    return alert


def _run_of(context: Any) -> tuple[str | None, str | None]:
    """(dag_id, run_id) of a callback context."""
    run = context.get("dag_run")
    dag_id = getattr(run, "dag_id", None) or getattr(context.get("dag"), "dag_id", None)
    return dag_id, getattr(run, "run_id", None) or context.get("run_id")


def on_dag_failure(context: Mapping[str, Any]) -> dict[str, Any]:
    """DAG-level on_failure_callback: a failed run."""
    dag_id, run_id = _run_of(context)
    ti = context.get("ti") or context.get("task_instance")
    task = getattr(ti, "task_id", None)
    reason = context.get("reason") or (f"task {task} failed" if task else "the run failed")
    return send(RUN_FAILED, f"{dag_id} run {run_id} failed: {reason}", dag_id=dag_id,
                run_id=run_id, context=context, task_id=task, reason=str(reason))


def model_rejected(event: dict[str, Any]) -> dict[str, Any]:
    """A candidate was rejected by the gate (event: the registry's rejected event)."""
    return send(MODEL_REJECTED,
                f"candidate {event['model_version']} rejected; champion stays "
                f"{event.get('previous_champion')}: {event.get('reason')}",
                dag_id=RETRAIN_DAG, run_id=event.get("run_id"),
                model_version=event["model_version"], champion=event.get("previous_champion"),
                dataset_version=event.get("dataset_version"), reason=event.get("reason"))


def scoring_quarantine(summary: dict[str, Any] | None,
                       context: Any = None) -> dict[str, Any] | None:
    """Alert when a batch summary reports quarantined studies; None otherwise."""
    summary = summary or {}
    count = int(summary.get("studies_quarantined") or 0)
    if not count:
        return None
    studies = [q.get("study_id") for q in summary.get("quarantined") or []]
    return send(STUDIES_QUARANTINED,
                f"scoring run {summary.get('run_id')} quarantined {count} "
                f"stud{'y' if count == 1 else 'ies'}: {', '.join(map(str, studies)) or '?'}",
                dag_id=SCORING_DAG, run_id=summary.get("run_id"), context=context,
                model_version=summary.get("model_version"), studies=studies, count=count)


def _studies(count: int) -> str:
    return f"stud{'y' if count == 1 else 'ies'}"


def scoring_out_of_distribution(summary: dict[str, Any] | None,
                                context: Any = None) -> dict[str, Any] | None:
    """Alert when a batch summary reports studies flagged out of distribution; None otherwise."""
    summary = summary or {}
    count = int(summary.get("studies_out_of_distribution") or 0)
    if not count:
        return None
    studies = [f.get("study_id") for f in summary.get("out_of_distribution") or []]
    return send(STUDIES_OUT_OF_DISTRIBUTION,
                f"scoring run {summary.get('run_id')} flagged {count} {_studies(count)} as out "
                f"of distribution (unlike the training data; their results are not to be "
                f"relied on): {', '.join(map(str, studies)) or '?'}",
                dag_id=SCORING_DAG, run_id=summary.get("run_id"), context=context,
                model_version=summary.get("model_version"), studies=studies, count=count)


def scoring_drift(summary: dict[str, Any] | None, context: Any = None) -> dict[str, Any] | None:
    """Alert when a batch summary's drift passed its PSI bound; None otherwise."""
    summary = summary or {}
    drift = summary.get("drift") or {}
    exceeded = list(drift.get("exceeded") or [])
    if not exceeded:
        return None
    figures = {name: drift.get(name) for name in exceeded}
    shown = "; ".join(f"{name} PSI {found['psi']} (KS {found['ks']}, {found['n']} values)"
                      for name, found in figures.items() if found)
    return send(SCORING_DRIFT,
                f"scoring run {summary.get('run_id')}: drift against the validation slices "
                f"over the PSI bound {drift.get('psi_bound')}: {shown}",
                dag_id=SCORING_DAG, run_id=summary.get("run_id"), context=context,
                model_version=summary.get("model_version"), drift=figures,
                psi_bound=drift.get("psi_bound"))


def scoring_alerts(summary: dict[str, Any] | None, context: Any = None) -> list[dict[str, Any]]:
    """Every alert a batch summary calls for: quarantine, out of distribution, drift."""
    found = (scoring_quarantine(summary, context), scoring_out_of_distribution(summary, context),
             scoring_drift(summary, context))
    return [alert for alert in found if alert is not None]


def on_scoring_summary(context: Mapping[str, Any]) -> dict[str, Any] | None:
    """on_success_callback of the summarize task: every alert the summary calls for; returns
    the first sent (quarantine, out of distribution, drift), or None."""
    ti = context["ti"]
    sent = scoring_alerts(ti.xcom_pull(task_ids=ti.task_id), context)
    return sent[0] if sent else None
