"""Every DAG in dags/ parses without errors, follows the project's conventions (tags, docs, UTC
start, retries, timeouts), and parses light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

DAGS = Path(__file__).resolve().parents[2] / "dags"
# What the scheduler and DAG processor must never import while parsing (tasks import them).
HEAVY_MODULES = ("tensorflow", "keras", "torch", "jax", "cv2", "pandas", "sklearn")


def test_dagbag_has_no_import_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert dagbag.dags, f"no DAG found in {DAGS}"


def test_every_dag_file_defines_a_dag(dagbag: Any) -> None:
    files = {os.path.realpath(p) for p in DAGS.glob("*.py") if not p.name.startswith("_")}
    assert files <= {os.path.realpath(d.fileloc) for d in dagbag.dags.values()}


def conventions_broken(dag: Any) -> list[str]:
    """What a DAG lacks of the project's conventions (empty when it follows them)."""
    broken = []
    if not dag.tags:
        broken.append("no tags")
    if not (dag.doc_md or "").strip():
        broken.append("no doc_md")
    if dag.catchup is not False:
        broken.append(f"catchup={dag.catchup!r}")
    if dag.start_date is None or dag.start_date.utcoffset() != timedelta(0):
        broken.append(f"start_date not in UTC: {dag.start_date!r}")
    if dag.default_args.get("retries", 0) < 1 or dag.default_args.get("retry_delay") is None:
        broken.append(f"default_args without retries/retry_delay: {dag.default_args!r}")
    no_retry = [t.task_id for t in dag.tasks if t.retries < 1]
    if no_retry:
        broken.append(f"tasks without retries: {no_retry}")
    if dag.dagrun_timeout is None:
        broken.append("no dagrun_timeout")
    no_timeout = [t.task_id for t in dag.tasks if t.execution_timeout is None]
    if no_timeout:
        broken.append(f"tasks without execution_timeout: {no_timeout}")
    return broken


def test_every_dag_follows_conventions(dagbag: Any) -> None:
    broken = {dag_id: b for dag_id, dag in dagbag.dags.items() if (b := conventions_broken(dag))}
    assert broken == {}


def test_parsing_dags_imports_no_heavy_module() -> None:
    """A fresh process parses every DAG file without TensorFlow, Keras, cv2, pandas & co."""
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS)!r})\n"
        "print(json.dumps({'dags': sorted(bag.dags), 'errors': list(bag.import_errors),\n"
        f"  'heavy': sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)}}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["dags"] and result["errors"] == []
    assert result["heavy"] == []


def test_conventions_catch_missing_timeouts() -> None:
    from datetime import UTC, datetime

    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    with DAG("no_timeouts", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC),
             catchup=False, tags=["t"], doc_md="doc",
             default_args={"retries": 1, "retry_delay": timedelta(minutes=1)}) as dag:
        EmptyOperator(task_id="work")

    assert conventions_broken(dag) == ["no dagrun_timeout",
                                       "tasks without execution_timeout: ['work']"]
