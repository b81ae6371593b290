"""The multi-machine layout, shown running on one machine: Airflow with the CeleryExecutor.

PostgreSQL (metadata DB and Celery result backend) and Redis (broker) from Debian's packages, a
real API server, scheduler and DAG processor, and two Celery workers, one per queue (`default`
and `scoring`), concurrency 1 each so that TensorFlow fits. S3 is the session's moto server.
The retraining DAG and then the scoring DAG are triggered through the REST API on a small
synthetic export and synthetic studies; both must finish green, and every task must have run on
a worker that serves its queue: each worker reports its own name as the task instance's
``hostname`` (``worker_hostname.hostname``).

The scheduler's own triggers (cron, asset events) are off (``use_job_schedule = False``), so the
runs this test triggers are the only runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_services import AirflowServices, airflow_available
from deploy_services import Postgres, Redis
from support import TINY_TRAINING, free_port

from brain_tumor import steps
from brain_tumor.settings import Settings, load_settings, settings_to_env
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.scores import ScoreStore

pytestmark = [pytest.mark.celery, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
#: queue -> the name its worker reports (``BT_WORKER_NAME``)
WORKERS = {"default": "worker-default", "scoring": "worker-scoring"}
RETRAIN_TASKS = {"find_new_exports", "ingest", "split", "train", "evaluate", "champion", "gate",
                 "route", "promote"}
RUN_TIMEOUT_S = 900


def worker(queue: str) -> tuple[str, ...]:
    """The `airflow celery worker` command line of one queue's worker."""
    return ("celery", "worker", "--queues", queue, "--concurrency", "1",
            "--celery-hostname", f"{queue}@%h")


def airflow_env(settings: Settings, postgres: Postgres, redis: Redis) -> dict[str, str]:
    """What every component gets: CeleryExecutor on Postgres + Redis, the project's settings."""
    return {
        **settings_to_env(settings),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url(),
        "AIRFLOW__CELERY__BROKER_URL": redis.url(),
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + postgres.url(),
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "worker_hostname.hostname",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep),
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


@pytest.fixture(scope="module")
def deploy_settings(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Tiny training on a fresh moto bucket; gate floors relaxed for the small synthetic set."""
    return load_settings(
        env={}, s3_endpoint_url=moto_endpoint, s3_bucket=f"deploy-{uuid.uuid4().hex[:12]}",
        s3_access_key_id="moto-test", s3_secret_access_key="moto-test-secret",
        home=tmp_path_factory.mktemp("deploy-home"),
        **{**TINY_TRAINING, "epochs": 12, "seg_epochs": 12, "batch_size": 8},
        gate_min_sensitivity=0.2, gate_min_roc_auc=0.7, gate_min_dice=0.05)


@pytest.fixture(scope="module")
def airflow(postgres: Postgres, redis_server: Redis, deploy_settings: Settings,
            tmp_path_factory: pytest.TempPathFactory,
            deploy_timings: dict[str, float]) -> Iterator[AirflowServices]:
    """API server, scheduler, DAG processor and a Celery worker per queue, all on loopback."""
    if not airflow_available():
        pytest.fail(f"the airflow CLI is not installed beside {sys.executable}", pytrace=False)
    services = AirflowServices(
        tmp_path_factory.mktemp("celery-airflow"),
        env=airflow_env(deploy_settings, postgres, redis_server),
        components=[("api-server",), ("scheduler",), ("dag-processor",),
                    worker("default"), worker("scoring")],
        component_env={f"celery-worker-{queue}": {
            "BT_WORKER_NAME": name,
            # two workers on one host: each serves its task logs on its own port
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
            for queue, name in WORKERS.items()})
    t = time.monotonic()
    try:
        services.start(timeout=300)
        services.airflow("pools", "set", deploy_settings.train_pool, "1", "GPUs for training")
        wait_for_workers(services, timeout=180)
    except subprocess.CalledProcessError as exc:
        services.stop()
        pytest.fail(f"`{' '.join(exc.cmd)}` failed ({exc.returncode}):\n{exc.stdout[-2000:]}\n"
                    f"{exc.stderr[-3000:]}", pytrace=False)
    except Exception:
        services.stop()
        raise
    deploy_timings["airflow + 2 celery workers up"] = time.monotonic() - t
    sampler = ConnectionSampler(postgres)
    sampler.start()
    yield services
    sampler.stop()
    deploy_timings["postgres connections, peak (count)"] = sampler.peak
    services.stop()


class ConnectionSampler(threading.Thread):
    """Samples the metadata DB's open connections every 2 s; keeps the peak (for sizing)."""

    def __init__(self, postgres: Postgres) -> None:
        super().__init__(daemon=True)
        self.postgres, self.peak = postgres, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(2):
            try:
                self.peak = max(self.peak, self.postgres.connections())
            except Exception:
                continue

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def wait_for_workers(services: AirflowServices, timeout: float) -> None:
    """Wait until both workers answer on the broker with the queues they were given."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        services.check_running()
        try:
            out = services.airflow("celery", "list-workers", "--output", "json", timeout=120)
            workers = json.loads(out.stdout or "[]")
            queues = {w["worker_name"].split("@")[0]: w["queues"] for w in workers}
            if all(q in queues and q in queues[q] for q in WORKERS):
                return
            last = out.stdout
        except (subprocess.CalledProcessError, ValueError, KeyError) as exc:
            last = f"{exc}: {getattr(exc, 'stderr', '')}"
        time.sleep(3)
    raise TimeoutError(f"Celery workers not ready after {timeout}s: {last}\n{services.logs()}")


def run_dag(services: AirflowServices, dag_id: str) -> tuple[dict[str, Any], list[dict]]:
    """Unpause, trigger through the REST API, wait; the finished run and its task instances."""
    services.unpause(dag_id)
    run_id = services.trigger(dag_id)
    run = services.wait_for_run(dag_id, run_id, timeout=RUN_TIMEOUT_S)
    return run, services.task_instances(dag_id, run_id)


def states(tis: list[dict]) -> dict[str, str]:
    """task id (``id[i]`` for mapped ones) -> state."""
    return {ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""): ti["state"]
            for ti in tis}


def assert_ran_on_their_queues(tis: list[dict]) -> dict[str, set[str]]:
    """Every task that ran did so on the worker of its queue; returns queue -> task ids."""
    ran: dict[str, set[str]] = {}
    for ti in tis:
        if ti["state"] in ("skipped", "removed"):
            continue
        queue = ti["queue"]
        assert queue in WORKERS, f"{ti['task_id']} was sent to unknown queue {queue!r}"
        assert ti["hostname"].endswith("/" + WORKERS[queue]), (
            f"{ti['task_id']} (queue {queue}) ran on {ti['hostname']!r}, "
            f"not on {WORKERS[queue]}")
        ran.setdefault(queue, set()).add(ti["task_id"])
    return ran


@pytest.fixture(scope="module")
def retrained(airflow: AirflowServices, deploy_settings: Settings,
              tmp_path_factory: pytest.TempPathFactory,
              deploy_timings: dict[str, float]) -> tuple[dict[str, Any], list[dict]]:
    """One retrain_nightly run on a synthetic export: (run, task instances)."""
    from brain_tumor.devtools.synth import SynthSpec, make_export
    from brain_tumor.ingest.exports import upload_export

    export = make_export(tmp_path_factory.mktemp("deploy-export") / "export",
                         SynthSpec(patients=12, slices=6, size=32, seed=1, bad=("corrupt",)))
    upload_export(steps.open_store(deploy_settings), deploy_settings, export.root, "export-001")
    t = time.monotonic()
    result = run_dag(airflow, "retrain_nightly")
    deploy_timings["retrain_nightly run (celery)"] = time.monotonic() - t
    return result


def test_retraining_runs_on_the_celery_workers(
        airflow: AirflowServices, retrained: tuple[dict[str, Any], list[dict]],
        deploy_settings: Settings, postgres: Postgres,
        deploy_timings: dict[str, float]) -> None:
    run, tis = retrained

    assert run["state"] == "success", (states(tis), airflow.logs())
    assert {t for t, s in states(tis).items() if s == "success"} == RETRAIN_TASKS
    ran = assert_ran_on_their_queues(tis)
    # the tasks that need TensorFlow (the local trainer is a process on the worker) on the ML
    # workers, the others on the default queue
    assert ran["scoring"] == {"train", "evaluate", "gate"}
    assert ran["default"] == RETRAIN_TASKS - ran["scoring"]
    deploy_timings["train task (tiny model) (s)"] = next(
        ti["duration"] for ti in tis if ti["task_id"] == "train")
    champion = steps.champion(deploy_settings)
    assert champion is not None and champion.startswith("m-")
    # the metadata DB really is this PostgreSQL server, and the executor Celery
    assert postgres.connections() > 0
    config = airflow.airflow("config", "get-value", "core", "executor").stdout.strip()
    assert config == "CeleryExecutor"


def test_scoring_runs_on_the_scoring_queue(
        airflow: AirflowServices, retrained: tuple[dict[str, Any], list[dict]],
        deploy_settings: Settings, tmp_path_factory: pytest.TempPathFactory,
        deploy_timings: dict[str, float]) -> None:
    from brain_tumor.devtools.synth import SynthSpec, make_studies
    from brain_tumor.scoring.readers import upload_study

    assert retrained[0]["state"] == "success", "retraining failed: no champion to score with"
    champion = steps.champion(deploy_settings)
    store = steps.open_store(deploy_settings)
    folders = make_studies(tmp_path_factory.mktemp("deploy-studies") / "studies",
                           SynthSpec(patients=3, slices=4, size=32, seed=21, first_patient=40))
    incoming = IncomingStore(store, deploy_settings)
    study_ids = [upload_study(incoming, folder)[0] for folder in folders]

    t = time.monotonic()
    run, tis = run_dag(airflow, "batch_score")
    deploy_timings["batch_score run (celery)"] = time.monotonic() - t

    assert run["state"] == "success", (states(tis), airflow.logs())
    scored = [ti for ti in tis if ti["task_id"] == "score"]
    deploy_timings["score task seconds per study (chunk)"] = (
        sum(ti["duration"] or 0 for ti in scored) / len(study_ids))
    chunk = deploy_settings.scoring_chunk_size
    assert len(scored) == -(-len(study_ids) // chunk)  # one mapped task per chunk
    assert all(ti["state"] == "success" for ti in scored)
    assert all(ti["queue"] == deploy_settings.scoring_queue for ti in scored)
    ran = assert_ran_on_their_queues(tis)
    assert ran["scoring"] >= {"score"}
    assert "score" not in ran.get("default", set())
    for study_id in study_ids:
        assert ScoreStore(store, deploy_settings).is_done(champion, study_id), study_id
