"""Alerts of the brain-tumor pipeline, as Airflow callbacks: a log line and a configurable notifier.

``send`` logs one WARNING line (``brain-tumor alert [<kind>] ...``) and hands the alert, a plain
dict, to the callable named by the ``alert_notifier`` setting (``BRAIN_TUMOR_ALERT_NOTIFIER``,
``package.module:function``); unset, the log line is the whole alert. A notifier that fails is
logged with its traceback and does not fail the task or callback that raised the alert.

Hooks:

- ``on_dag_failure``: a DAG-level ``on_failure_callback`` (retrain_nightly, batch_score).
- ``model_rejected``: called by retrain_nightly's ``reject`` task with the registry event.
- ``on_scoring_summary``: an ``on_success_callback`` of batch_score's ``summarize`` task; alerts
  when the batch quarantined studies (``scoring_quarantine`` does the same from a summary dict).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

RUN_FAILED, MODEL_REJECTED, STUDIES_QUARANTINED = "run_failed", "model_rejected", \
    "studies_quarantined"


def load_notifier(path: str | None) -> Callable[[dict[str, Any]], Any] | None:
    """The callable at ``package.module:function`` (or ``package.module.function``); None if unset."""
    if not path:
        return None
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"alert_notifier must be 'package.module:function', received {path!r}")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"alert_notifier {path!r} cannot be imported: {exc}") from exc
    if not callable(target):
        raise ValueError(f"alert_notifier {path!r} is a {type(target).__name__}, not a callable")
    return target


def send(kind: str, message: str, notifier: str | None = None, **details: Any) -> dict[str, Any]:
    """Log the alert and pass it to the notifier (default: the ``alert_notifier`` setting)."""
    alert = {"kind": kind, "message": message, "details": details,
             "at": datetime.now(UTC).isoformat(timespec="seconds")}
    log.warning("brain-tumor alert [%s] %s %s", kind, message, details)
    try:
        if notifier is None:
            from brain_tumor.settings import load_settings

            notifier = load_settings().alert_notifier
        target = load_notifier(notifier)
        if target is not None:
            target(alert)
    except Exception:  # an alert must never take the pipeline down with it
        log.exception("brain-tumor alert [%s]: the notifier %r failed", kind, notifier)
    return alert


def _run_of(context: Any) -> tuple[str | None, str | None]:
    """(dag_id, run_id) of a callback context."""
    run = context.get("dag_run")
    dag_id = getattr(run, "dag_id", None) or getattr(context.get("dag"), "dag_id", None)
    return dag_id, getattr(run, "run_id", None) or context.get("run_id")


def on_dag_failure(context: Any) -> dict[str, Any]:
    """DAG-level on_failure_callback: a failed run."""
    dag_id, run_id = _run_of(context)
    ti = context.get("ti") or context.get("task_instance")
    task = getattr(ti, "task_id", None)
    reason = context.get("reason") or (f"task {task} failed" if task else "the run failed")
    return send(RUN_FAILED, f"{dag_id} run {run_id} failed: {reason}", dag_id=dag_id,
                run_id=run_id, task_id=task, reason=str(reason))


def model_rejected(event: dict[str, Any]) -> dict[str, Any]:
    """A candidate was rejected by the gate (event: the registry's rejected event)."""
    return send(MODEL_REJECTED,
                f"candidate {event['model_version']} rejected; champion stays "
                f"{event.get('previous_champion')}: {event.get('reason')}",
                model_version=event["model_version"], champion=event.get("previous_champion"),
                dataset_version=event.get("dataset_version"), run_id=event.get("run_id"))


def scoring_quarantine(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """Alert when a batch summary reports quarantined studies; None otherwise."""
    summary = summary or {}
    count = int(summary.get("studies_quarantined") or 0)
    if not count:
        return None
    studies = [q.get("study_id") for q in summary.get("quarantined") or []]
    return send(STUDIES_QUARANTINED,
                f"scoring run {summary.get('run_id')} quarantined {count} "
                f"stud{'y' if count == 1 else 'ies'}: {', '.join(map(str, studies)) or '?'}",
                run_id=summary.get("run_id"), model_version=summary.get("model_version"),
                studies=studies, count=count)


def on_scoring_summary(context: Any) -> dict[str, Any] | None:
    """on_success_callback of the summarize task: alert on quarantined studies."""
    ti = context["ti"]
    return scoring_quarantine(ti.xcom_pull(task_ids=ti.task_id))
