"""
# Nightly retraining: new exports → dataset version → model → gate → champion

Every night at 02:00 UTC this DAG looks for TCIA exports in object storage that the ingest ledger
has not seen (`exports/<export_id>/` folders or archives) and, if there are any:

1. **find_new_exports**: lists them; with none the run ends early, green, with every downstream
   task *skipped* (log line "no new exports").
2. **ingest**: takes the exports in, in order, into a new dataset version (manifest, quarantine,
   HEAD moved); rejected files go to the version's quarantine.
3. **split**: splits that version by patient, keeping every patient of the previous split.
4. **train**: `brain-tumor train` in the trainer image through `DockerOperator` on the GPU host
   (`BRAIN_TUMOR_TRAINER=docker`) or as a local process (`local`, the embedded default), in the
   pool `BRAIN_TUMOR_TRAIN_POOL` sized to the GPUs. The model version id follows from the dataset
   version and the training settings, so a retried task does not train twice.
5. **evaluate**: the candidate on the dataset's test patients (threshold from validation).
6. **champion**: the current champion, re-evaluated on the *candidate's* test patients.
7. **gate**: floors and no regression against that champion; every check is stored in
   `models/<candidate>/gate/<dataset>.json` and shown in the task log.
8. **route → promote | reject**: a pass promotes the candidate (atomically, against the
   champion the gate saw) and updates the `brain_tumor_champion` asset; a failure records the
   rejection with its reasons and the champion stays.

Each task calls one function of `brain_tumor.steps` with settings from the worker's
`BRAIN_TUMOR_*` environment; XCom carries only ids, counts and metric dicts. The tasks that need
TensorFlow (`evaluate`, `gate`, and `train` when it runs locally) go to the Celery queue
`BRAIN_TUMOR_SCORING_QUEUE` (the ML workers); the others to the default queue.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import dag, get_current_context, task

from brain_tumor_airflow.alerts import model_rejected, on_dag_failure
from brain_tumor_airflow.assets import CHAMPION

log = logging.getLogger(__name__)

DEFAULT_ARGS = {"owner": "brain-tumor", "retries": 2, "retry_delay": timedelta(minutes=5)}


def _settings() -> Any:
    from brain_tumor.settings import load_settings

    return load_settings()


@task.short_circuit
def find_new_exports() -> list[str]:
    """Export ids in storage that no dataset version took in yet (empty: skip the rest)."""
    from brain_tumor import steps

    found = steps.new_exports(_settings())
    if not found:
        log.info("no new exports: nothing to ingest, skipping the rest of the run")
    return found


@task(multiple_outputs=True)
def ingest(export_ids: list[str]) -> dict[str, Any]:
    """Ingest the new exports into a new dataset version; returns it and per-export counts."""
    from brain_tumor import steps

    result = steps.ingest(_settings(), export_ids)
    for export in result["exports"]:
        export.pop("quarantine", None)  # one row per rejected file: in S3, not in XCom
    return result


@task(multiple_outputs=True)
def split(dataset_version: str) -> dict[str, Any]:
    """Split the dataset version by patient, stable against its ancestors' splits."""
    from brain_tumor import steps

    return steps.split(_settings(), dataset_version)


@task
def evaluate(dataset_version: str) -> dict[str, Any]:
    """Evaluate the model version training published, on the dataset's test patients."""
    from brain_tumor import steps

    settings = _settings()
    return steps.evaluate(settings, steps.expected_model_version(settings, dataset_version),
                          dataset_version)


@task
def champion() -> str | None:
    """The champion the gate compares against (None before the first promotion)."""
    from brain_tumor import steps

    return steps.champion(_settings())


@task
def gate(candidate: dict[str, Any], champion_version: str | None) -> dict[str, Any]:
    """Gate the candidate against the floors and the champion on the same test patients."""
    from brain_tumor import steps

    result = steps.gate(_settings(), candidate["model_version"], candidate["dataset_version"],
                        champion_version)
    for check in result["checks"]:
        log.info("%-28s %-6s value %s bound %s", check["name"],
                 "PASS" if check["passed"] else "FAIL", check["value"], check["bound"])
    return {k: result[k] for k in ("model_version", "dataset_version", "champion_version",
                                   "passed", "explanation", "checks", "candidate_metrics")}


@task.branch
def route(gate_result: dict[str, Any]) -> str:
    """Go on to `promote` when the gate passed, else to `reject`."""
    return "promote" if gate_result["passed"] else "reject"


@task(outlets=[CHAMPION])
def promote(gate_result: dict[str, Any]) -> dict[str, Any]:
    """Make the candidate champion, atomically against the champion the gate saw."""
    from brain_tumor import steps

    event = steps.decide(_settings(), gate_result, run_id=get_current_context()["run_id"])
    log.info("%s %s: %s", event["action"], event["model_version"], event["reason"])
    return event


@task
def reject(gate_result: dict[str, Any]) -> dict[str, Any]:
    """Record the rejection with the gate's reasons; the champion stays."""
    from brain_tumor import steps

    event = steps.decide(_settings(), gate_result, run_id=get_current_context()["run_id"])
    log.warning("%s %s: %s", event["action"], event["model_version"], event["reason"])
    model_rejected(event)
    return event


@dag(
    dag_id="retrain_nightly",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    on_failure_callback=on_dag_failure,
    tags=["brain-tumor", "retraining"],
    doc_md=__doc__,
)
def retrain_nightly() -> None:
    """The nightly retraining pipeline (see the module docstring)."""
    from brain_tumor_airflow.trainer import train_task

    settings = _settings()
    dataset = ingest(find_new_exports())
    splits = split(dataset["dataset_version"])
    ml = settings.scoring_queue  # the workers with TensorFlow
    train = train_task(settings.trainer, "{{ ti.xcom_pull(task_ids='split', key='dataset_version') }}",
                       settings.train_pool, ml_queue=ml)
    candidate = evaluate.override(queue=ml)(splits["dataset_version"])
    current = champion()
    splits >> train >> [candidate, current]
    checked = gate.override(queue=ml)(candidate, current)
    route(checked) >> [promote(checked), reject(checked)]


retrain_nightly()
