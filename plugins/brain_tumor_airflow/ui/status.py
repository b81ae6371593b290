"""Alerts shown on every ops page: failed runs, rejected candidates, quarantined studies.

``recent_runs`` reads run states from Airflow's own metadata database (the API server's);
``page_alerts`` is pure and turns runs, registry events and batch summaries into alerts.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

RETRAIN_DAG, SCORING_DAG = "retrain_nightly", "batch_score"
RECENT_RUNS = 10  # per DAG
RECENT_BATCHES = 10


def recent_runs(dag_ids: tuple[str, ...] = (RETRAIN_DAG, SCORING_DAG),
                limit: int = RECENT_RUNS) -> list[dict[str, Any]]:
    """The newest runs of each DAG (dag_id, run_id, state, start, end), newest first."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    runs: list[dict[str, Any]] = []
    with create_session() as session:
        for dag_id in dag_ids:
            rows = session.execute(
                select(DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.start_date,
                       DagRun.end_date)
                .where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(limit)).all()
            runs += [{"dag_id": r[0], "run_id": r[1], "state": str(getattr(r[2], "value", r[2])),
                      "start_date": r[3], "end_date": r[4]} for r in rows]
    return runs


def run_link(dag_id: str, run_id: str | None) -> str | None:
    """The Airflow UI page of a run (None without a real run id)."""
    from urllib.parse import quote

    if not run_id or run_id == "cli":
        return None
    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def page_alerts(runs: list[dict[str, Any]], events: list[dict[str, Any]],
                batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alerts (kind, text, link) from runs, registry events (newest first) and batches."""
    alerts = [{"kind": "run_failed",
               "text": f"{r['dag_id']} run {r['run_id']} failed",
               "link": run_link(r["dag_id"], r["run_id"])}
              for r in runs if r["state"] == "failed"]
    for event in events:  # rejections since the champion last moved: the champion stayed old
        if event["action"] != "rejected":
            break
        alerts.append({"kind": "model_rejected",
                       "text": f"candidate {event['model_version']} was rejected "
                               f"({event['at']}): {event['reason']}",
                       "link": "gates#" + gate_anchor(event["model_version"],
                                                      event.get("dataset_version"))})
    for batch in batches[:RECENT_BATCHES]:
        if batch.get("studies_quarantined"):
            ids = ", ".join(q["study_id"] for q in batch.get("quarantined") or [])
            alerts.append({"kind": "studies_quarantined",
                           "text": f"scoring batch {batch['run_id']} quarantined "
                                   f"{batch['studies_quarantined']} stud"
                                   f"{'y' if batch['studies_quarantined'] == 1 else 'ies'}"
                                   + (f": {ids}" if ids else ""),
                           "link": "scoring#batch-" + anchor(batch["run_id"])})
    return alerts


def anchor(text: str) -> str:
    """An HTML id made of text (letters, digits, '-', '_')."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def gate_anchor(model_version: str, dataset_version: str | None) -> str:
    """The id of a gate result on the gate page."""
    return anchor(f"gate-{model_version}-{dataset_version or ''}")
