"""
# Nightly retraining: new exports → dataset version → model → gate → champion

Every night at 02:00 UTC this DAG looks for TCIA exports in object storage that the ingest ledger
has not seen (`exports/<export_id>/` folders or archives) and, if there are any:

1. **find_new_exports**: lists them; with none the run ends early, green, with every downstream
   task *skipped* (log line "no new exports"), unless a manual run asks for a dataset version.
2. **ingest**: takes the exports in, in order, into a new dataset version (manifest, quarantine,
   HEAD moved); rejected files go to the version's quarantine.
3. **split**: splits that version by patient, keeping every patient of the previous split.
4. **train**: `brain-tumor train` in the trainer image through `DockerOperator` on the GPU host
   (`BRAIN_TUMOR_TRAINER=docker`) or as a local process (`local`, the embedded default), in the
   pool `BRAIN_TUMOR_TRAIN_POOL` sized to the GPUs. The model version id follows from the dataset
   version, the training settings and the code version, so a retried task does not train twice
   and a code upgrade trains anew (the trainer image must carry the workers' code).
5. **evaluate**: the candidate on the dataset's test patients (threshold from validation).
6. **champion**: the current champion, re-evaluated on the *candidate's* test patients.
7. **gate**: floors and no regression against that champion; every check is stored in
   `models/<candidate>/gate/<dataset>.json` and shown in the task log.
8. **route → promote | reject**: a pass promotes the candidate (atomically, against the
   champion the gate saw) and updates the `brain_tumor_champion` asset; a failure records the
   rejection with its reasons and the champion stays.

## Manual runs (params)
- **dataset_version**: train on this dataset version; no export is taken in (new ones wait for
  the next run), the version is split as usual (unchanged when it was split already).
- **retrain_head**: retrain even when no export is new, on HEAD (after taking in any new ones).

Default params (`null`, `false`) are the scheduled run. Both at once are refused. The gate
decides promotion in every run; a manual promotion is `brain-tumor registry promote --reason`.

## Timeouts
Every task has an `execution_timeout` (per try): `train` `BRAIN_TUMOR_TRAIN_TIMEOUT_MINUTES`
(default 720), the quick tasks 15 minutes, the others 2 hours; a run still going after
`BRAIN_TUMOR_RETRAIN_DAGRUN_TIMEOUT_MINUTES` (default 1320) is failed.

Each task calls one function of `brain_tumor.steps` with settings from the worker's
`BRAIN_TUMOR_*` environment, loaded when it runs; parsing reads only the few settings of
`brain_tumor.parse_settings` (queue, pool, trainer, timeouts) and ignores the others. XCom
carries only ids, counts and metric dicts. The tasks that need TensorFlow (`evaluate`, `gate`,
and `train` when it runs locally) go to the Celery queue `BRAIN_TUMOR_SCORING_QUEUE` (the ML
workers); the others to the default queue.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from brain_tumor.parse_settings import load_parse_settings
from brain_tumor_airflow.alerts import model_rejected, on_dag_failure
from brain_tumor_airflow.assets import CHAMPION

log = logging.getLogger(__name__)

QUICK = timedelta(minutes=15)  # listing, registry reads and writes, branching
DEFAULT_ARGS = {"owner": "brain-tumor", "retries": 2, "retry_delay": timedelta(minutes=5),
                "execution_timeout": timedelta(hours=2)}
PARAMS = {
    "dataset_version": Param(
        None, type=["null", "string"], minLength=1,
        description="Manual runs: train on this dataset version, taking no export in."),
    "retrain_head": Param(
        False, type="boolean",
        description="Manual runs: retrain on HEAD even when no export is new."),
}


def _settings() -> Any:
    """The task's settings, with the S3 connection BRAIN_TUMOR_S3_CONN_ID resolved."""
    from brain_tumor_airflow.storage import task_settings

    return task_settings()


@task.short_circuit(execution_timeout=QUICK)
def find_new_exports() -> dict[str, Any] | None:
    """What the run takes in and trains on: new exports, or a dataset version (None: skip)."""
    from airflow.sdk.exceptions import AirflowFailException

    from brain_tumor import steps

    params = get_current_context()["params"]
    requested, head = params["dataset_version"], params["retrain_head"]
    if requested is not None:
        if head:
            raise AirflowFailException("params dataset_version and retrain_head exclude each "
                                       f"other, received {requested!r} and {head!r}")
        log.info("manual run: training on dataset version %s; new exports wait for the next "
                 "run", requested)
        return {"export_ids": [], "dataset_version": requested}
    found = steps.new_exports(_settings())
    if not found and not head:
        log.info("no new exports: nothing to ingest, skipping the rest of the run")
        return None
    if not found:
        log.info("no new exports: retraining on HEAD (retrain_head)")
    return {"export_ids": found, "dataset_version": None}


@task(multiple_outputs=True)
def ingest(todo: dict[str, Any]) -> dict[str, Any]:
    """Ingest the new exports into a new dataset version; returns it and per-export counts.

    A requested dataset version passes through; no export leaves it at None (HEAD, for split).
    """
    from brain_tumor import steps

    if todo["dataset_version"] is not None:
        return {"dataset_version": todo["dataset_version"], "exports": []}
    result = steps.ingest(_settings(), todo["export_ids"])
    for export in result["exports"]:
        export.pop("quarantine", None)  # one row per rejected file: in S3, not in XCom
    return result


@task(multiple_outputs=True)
def split(dataset_version: str | None) -> dict[str, Any]:
    """Split the dataset version (None: HEAD) by patient, stable against its ancestors' splits."""
    from airflow.sdk.exceptions import AirflowFailException

    from brain_tumor import steps
    from brain_tumor.store.datasets import DatasetNotFound

    try:
        return steps.split(_settings(), dataset_version)
    except DatasetNotFound as exc:  # a retry would not make it appear
        raise AirflowFailException(str(exc)) from exc


@task
def evaluate(dataset_version: str) -> dict[str, Any]:
    """Evaluate the model version training published, on the dataset's test patients."""
    from brain_tumor import steps

    settings = _settings()
    return steps.evaluate(settings, steps.expected_model_version(settings, dataset_version),
                          dataset_version)


@task(execution_timeout=QUICK)
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


@task.branch(execution_timeout=QUICK)
def route(gate_result: dict[str, Any]) -> str:
    """Go on to `promote` when the gate passed, else to `reject`."""
    return "promote" if gate_result["passed"] else "reject"


@task(outlets=[CHAMPION], execution_timeout=QUICK)
def promote(gate_result: dict[str, Any]) -> dict[str, Any]:
    """Make the candidate champion, atomically against the champion the gate saw."""
    from brain_tumor import steps

    event = steps.decide(_settings(), gate_result, run_id=get_current_context()["run_id"])
    log.info("%s %s: %s", event["action"], event["model_version"], event["reason"])
    return event


@task(execution_timeout=QUICK)
def reject(gate_result: dict[str, Any]) -> dict[str, Any]:
    """Record the rejection with the gate's reasons; the champion stays."""
    from brain_tumor import steps

    event = steps.decide(_settings(), gate_result, run_id=get_current_context()["run_id"])
    log.warning("%s %s: %s", event["action"], event["model_version"], event["reason"])
    model_rejected(event)
    return event


# only what the DAG's shape needs; the tasks load the other settings when they run
PARSED = load_parse_settings(("scoring_queue", "trainer", "train_pool", "train_timeout_minutes",
                              "retrain_dagrun_timeout_minutes"))


@dag(
    dag_id="retrain_nightly",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=PARSED.retrain_dagrun_timeout_minutes),
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    on_failure_callback=on_dag_failure,
    tags=["brain-tumor", "retraining"],
    doc_md=__doc__,
)
def retrain_nightly() -> None:
    """The nightly retraining pipeline (see the module docstring)."""
    from brain_tumor_airflow.trainer import train_task

    dataset = ingest(find_new_exports())
    splits = split(dataset["dataset_version"])
    ml = PARSED.scoring_queue  # the workers with TensorFlow
    dataset_version = "{{ ti.xcom_pull(task_ids='split', key='dataset_version') }}"
    train = train_task(PARSED.trainer, dataset_version, PARSED.train_pool, ml_queue=ml,
                       execution_timeout=timedelta(minutes=PARSED.train_timeout_minutes))
    candidate = evaluate.override(queue=ml)(splits["dataset_version"])
    current = champion()
    splits >> train >> [candidate, current]
    checked = gate.override(queue=ml)(candidate, current)
    route(checked) >> [promote(checked), reject(checked)]


retrain_nightly()
