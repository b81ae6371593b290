"""
# Nightly retraining: new exports → dataset version → split

Every night at 02:00 UTC this DAG looks for TCIA exports in object storage that the ingest ledger
has not seen (`exports/<export_id>/` folders or archives) and, if there are any:

1. **find_new_exports**: lists them; with none the run ends early, green, with every downstream
   task *skipped* (log line "no new exports").
2. **ingest**: takes the exports in, in order, into a new dataset version (manifest, quarantine,
   HEAD moved); rejected files go to the version's quarantine.
3. **split**: splits that version by patient, keeping every patient of the previous split where
   it was.

Training, evaluation, the promotion gate and promotion follow `split` (to come). Each task calls
one function of `brain_tumor.steps` with settings from the worker's `BRAIN_TUMOR_*` environment;
XCom carries only export ids, the dataset version and counts.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import dag, task

log = logging.getLogger(__name__)

DEFAULT_ARGS = {
    "owner": "brain-tumor",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
}


@task.short_circuit
def find_new_exports() -> list[str]:
    """Export ids in storage that no dataset version took in yet (empty: skip the rest)."""
    from brain_tumor import steps
    from brain_tumor.settings import load_settings

    found = steps.new_exports(load_settings())
    if not found:
        log.info("no new exports: nothing to ingest, skipping the rest of the run")
    return found


@task(multiple_outputs=True)
def ingest(export_ids: list[str]) -> dict[str, Any]:
    """Ingest the new exports into a new dataset version; returns it and per-export counts."""
    from brain_tumor import steps
    from brain_tumor.settings import load_settings

    result = steps.ingest(load_settings(), export_ids)
    for export in result["exports"]:
        export.pop("quarantine", None)  # one row per rejected file: in S3, not in XCom
    return result


@task(multiple_outputs=True)
def split(dataset_version: str) -> dict[str, Any]:
    """Split the dataset version by patient, stable against its ancestors' splits."""
    from brain_tumor import steps
    from brain_tumor.settings import load_settings

    return steps.split(load_settings(), dataset_version)


@dag(
    dag_id="retrain_nightly",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["brain-tumor", "retraining"],
    doc_md=__doc__,
)
def retrain_nightly() -> None:
    """The nightly retraining pipeline (see the module docstring)."""
    export_ids = find_new_exports()
    dataset = ingest(export_ids)
    split(dataset["dataset_version"])
    # to come: splits = split(...); train(splits["dataset_version"]) >> evaluate >> gate >> promote


retrain_nightly()
