"""
# Batch scoring: incoming studies → champion model → results, overlays, batch summary

Studies arrive as folders of slice TIFFs under `incoming/<study_id>/`. This DAG scores the ones
the champion has not scored yet and writes per study `scores/<champion>/<study_id>/`
(`slices.parquet`, `summary.json`, masks, overlays, `overview.png`; a done marker last) and per
run `scores/batches/<run_id>.json`.

## When it runs
- **On a short cron** (`BRAIN_TUMOR_SCORING_SCHEDULE`, default every 10 minutes, UTC): new S3
  keys raise no Airflow event by themselves — asset watchers need an event trigger (a queue), not
  an S3 listing — so the DAG polls. A poll that finds nothing is one listing of `incoming/` and
  ends in seconds; a sensor would hold a worker slot (or a triggerer) all the time for the same
  answer, and an event from the uploading side would need every uploader to call Airflow.
- **When the champion changes**: `retrain_nightly`'s `promote` updates the `brain_tumor_champion`
  asset, which starts a run at once (`AssetOrTimeSchedule`). It re-scores the studies that
  arrived within `BRAIN_TUMOR_RESCORE_WINDOW_DAYS` (default 7); older studies keep the result of
  the champion that scored them.

## Tasks
1. **plan**: the champion (none yet: the run fails at once, without retries, saying so) and the
   due studies, oldest first, at most `BRAIN_TUMOR_SCORING_MAX_STUDIES_PER_RUN` (a backlog is
   worked off over several runs). With `BRAIN_TUMOR_SCORING_SOURCE=dicomweb` it first fetches
   the PACS's due studies into `incoming/` (README, "Scoring from a PACS"); each study's DICOM
   SEG then goes back to the PACS.
2. **score**: one mapped task per chunk of `BRAIN_TUMOR_SCORING_CHUNK_SIZE` studies (default
   8), at most `BRAIN_TUMOR_SCORING_PARALLELISM` at once, on the `BRAIN_TUMOR_SCORING_QUEUE`
   Celery queue. Each Airflow task is its own process, so the model is loaded once per chunk
   and its cost (with the task's start) is shared by the chunk's studies. A study with unusable
   slices is quarantined (`scores/<champion>/quarantine/<study_id>.json`) and the others go on;
   a study that fails otherwise (a storage outage) is reported and the chunk goes on, then the
   task fails and is retried, skipping what is done. A study is all or nothing: a crash leaves
   no visible partial result, and a retry rewrites the same keys.
3. **summarize** (runs whatever happened upstream): writes the batch summary (planned, scored,
   skipped, quarantined, failed, deferred, tumors found, time spent reading / in the model /
   writing); fails the run if a study's task failed, after writing it.

The model version is pinned by `plan`: a promotion during a run does not mix two models.

## Manual runs (params)
- **study_ids**: score only these studies under `incoming/` (unknown ids fail the plan), without
  the per-run cap or the re-scoring window; studies the model already scored are skipped.
- **model_version**: score with this model version instead of the champion (no champion needed).

Default params (`null`) are the scheduled run.

## Timeouts
Every task has an `execution_timeout` (per try): `plan` and `summarize` 15 minutes, `score` 30
minutes per study of its chunk; a run still going after
`BRAIN_TUMOR_SCORING_DAGRUN_TIMEOUT_MINUTES` (default 180) is failed. Parsing reads only the
settings of `brain_tumor.parse_settings` (schedule, queue, parallelism, chunk size, timeouts);
the tasks load the others when they run.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import (
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    dag,
    get_current_context,
    task,
)

from brain_tumor.parse_settings import load_parse_settings
from brain_tumor_airflow.alerts import on_dag_failure, on_scoring_summary, scoring_alerts
from brain_tumor_airflow.assets import CHAMPION

log = logging.getLogger(__name__)

QUICK = timedelta(minutes=15)  # plan and summarize: listings and one small write
PER_STUDY = timedelta(minutes=30)  # score: each study of a chunk may take this long
DEFAULT_ARGS = {"owner": "brain-tumor", "retries": 2, "retry_delay": timedelta(minutes=2),
                "execution_timeout": PER_STUDY}
PARAMS = {
    "study_ids": Param(
        None, type=["null", "array"], items={"type": "string", "minLength": 1}, minItems=1,
        uniqueItems=True, description="Manual runs: score only these studies under incoming/."),
    "model_version": Param(
        None, type=["null", "string"], minLength=1,
        description="Manual runs: score with this model version instead of the champion."),
}


def _settings() -> Any:
    """The task's settings, with the S3 connection BRAIN_TUMOR_S3_CONN_ID resolved."""
    from brain_tumor_airflow.storage import task_settings

    return task_settings()


def _schedule(cron: str) -> AssetOrTimeSchedule:
    """The scoring cron, or a champion change, whichever comes first."""
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"),
                               assets=[CHAMPION])


@task(execution_timeout=QUICK)
def plan() -> list[dict[str, str]]:
    """The studies this run scores, as score's arguments; fails (no retry) on a bad request.

    No champion, an unknown model version or unknown study ids fail it without retries. The
    whole plan (model, counts of what waits and why) goes to the XCom key ``batch``.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from brain_tumor import steps
    from brain_tumor.scoring.batch import chunks
    from brain_tumor.store.datasets import utc_now
    from brain_tumor.store.modelstore import ModelNotFound

    params = get_current_context()["params"]
    settings = _settings()
    try:
        batch = steps.plan_scoring(settings, study_ids=params["study_ids"],
                                   model_version=params["model_version"])
    except (steps.NoChampion, ModelNotFound, ValueError) as exc:
        raise AirflowFailException(str(exc)) from exc
    deferred = batch.pop("deferred_ids")  # XCom keeps the count
    if deferred:
        log.info("%d due studies wait for later runs (per-run cap), first: %s", len(deferred),
                 ", ".join(deferred[:10]))
    groups = chunks(batch["study_ids"], settings.scoring_chunk_size)
    get_current_context()["ti"].xcom_push(key="batch", value={**batch, "chunks": len(groups),
                                                              "started_at": utc_now()})
    if not groups:
        log.info("no studies to score with %s", batch["model_version"])
    return [{"model_version": batch["model_version"], "study_ids": group} for group in groups]


@task
def score(model_version: str, study_ids: list[str]) -> list[dict[str, Any]]:
    """Score a chunk of studies with one model load; fails after the others if one failed.

    The per-study results go to the XCom key ``results`` before the task can fail, so the
    summary counts what was scored; a retry skips the studies that are done.
    """
    from airflow.sdk.exceptions import AirflowException

    from brain_tumor import steps

    chunk = steps.score_chunk(_settings(), model_version, study_ids)
    get_current_context()["ti"].xcom_push(key="results", value=chunk["results"])
    for result in chunk["results"]:
        if result["status"] == "quarantined":
            log.warning("study %s quarantined (%s): %s", result["study_id"], result["reason"],
                        result["detail"])
    if chunk["failed"]:
        raise AirflowException(f"{len(chunk['failed'])} of {len(study_ids)} studies failed: "
                               + "; ".join(f"{f['study_id']}: {f['error']}"
                                           for f in chunk["failed"]))
    return chunk["results"]


@task(trigger_rule="all_done", on_success_callback=on_scoring_summary, execution_timeout=QUICK)
def summarize() -> dict[str, Any]:
    """Write the batch summary; fail the run if a planned study's task failed."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from brain_tumor import steps

    context = get_current_context()
    ti = context["ti"]
    batch = ti.xcom_pull(task_ids="plan", key="batch")
    if batch is None:
        raise AirflowFailException("no batch to summarize: the plan task failed (see its log)")
    mapped = batch["chunks"]
    pulled = (ti.xcom_pull(task_ids="score", key="results", map_indexes=list(range(mapped)))
              if mapped else [])
    results = [r for chunk in pulled if chunk for r in chunk]
    run = context["dag_run"]
    run_type = getattr(run.run_type, "value", run.run_type)
    summary = steps.finish_batch(_settings(), batch, results, run.run_id,
                                 batch["started_at"], str(run_type))
    if summary["failed"]:
        scoring_alerts(summary, context)  # the success callback will not run: alert here
        raise AirflowException(f"{summary['studies_failed']} study task(s) failed: "
                               f"{', '.join(summary['failed'])}; the next run retries them")
    return summary


# only what the DAG's shape needs; the tasks load the other settings when they run
PARSED = load_parse_settings(("scoring_schedule", "scoring_queue", "scoring_parallelism",
                              "scoring_chunk_size", "scoring_dagrun_timeout_minutes"))


@dag(
    dag_id="batch_score",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=PARSED.scoring_dagrun_timeout_minutes),
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    on_failure_callback=on_dag_failure,
    tags=["brain-tumor", "scoring"],
    doc_md=__doc__,
    schedule=_schedule(PARSED.scoring_schedule),
)
def batch_score() -> None:
    """The batch scoring pipeline (see the module docstring)."""
    studies = plan()
    scored = score.override(queue=PARSED.scoring_queue,
                            max_active_tis_per_dagrun=PARSED.scoring_parallelism,
                            execution_timeout=PER_STUDY * PARSED.scoring_chunk_size,
                            ).expand_kwargs(studies)
    summary = summarize()
    studies >> scored >> summary
    studies >> summary


batch_score()
