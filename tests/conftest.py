"""Session-wide fixtures: one S3 server per test session, small synthetic exports, Airflow home.

Tests talk to real S3 servers on 127.0.0.1: moto's server for most (each test gets its own
bucket), SeaweedFS (`weed mini`, the embedded default) where marked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import TINY_TRAINING, free_port, free_port_base

from brain_tumor.devtools.embedded_s3 import EmbeddedS3
from brain_tumor.settings import Settings, load_settings, settings_to_env
from brain_tumor.store.storage import ObjectStore

REPO = Path(__file__).resolve().parents[1]
#: keys the tests sign moto requests with (moto accepts any; SeaweedFS tests use the server's)
MOTO_KEYS = {"s3_access_key_id": "moto-test", "s3_secret_access_key": "moto-test-secret"}
#: where boto3's default credential chain would look outside the settings
AWS_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                            "AWS_PROFILE", "AWS_DEFAULT_PROFILE")
#: fixtures that start a server or train a model: never in tests/unit/
SERVICE_FIXTURES = frozenset({"moto_endpoint", "seaweed", "trained", "evaluated", "airflow_db"})


def pytest_configure(config: pytest.Config) -> None:
    """Point Airflow at a throw-away home on SQLite before anything imports it."""
    home = Path(os.environ.get("BT_TEST_AIRFLOW_HOME", REPO / "test-output" / "airflow"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(home))
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__PARALLELISM", "4")
    os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
    os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home}/airflow.db")
    # keep the developer's own BRAIN_TUMOR_* settings out of the tests
    for name in list(os.environ):
        if name.startswith("BRAIN_TUMOR_"):
            del os.environ[name]
    # nor the developer's AWS credentials: a test signs with the keys it gives
    for name in AWS_CREDENTIAL_VARIABLES:
        os.environ.pop(name, None)
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(home / "no-aws-credentials")
    os.environ["AWS_CONFIG_FILE"] = str(home / "no-aws-config")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test outside tests/unit/ ``integration``, so ``-m "not integration"`` and
    ``tests/unit`` pick the same fast layer."""
    for item in items:
        if _layer(item) != "unit":
            item.add_marker(pytest.mark.integration)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A unit test that asks for a server or a training run fails and says where it belongs."""
    if _layer(item) == "unit":
        used = sorted(SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())))
        if used:
            pytest.fail(f"{item.nodeid} uses {', '.join(used)}: tests/unit/ holds tests without "
                        f"servers or training; move it to tests/integration/", pytrace=False)


def _layer(item: pytest.Item) -> str:
    """The first folder under tests/ of a test (unit, integration, dags, ...)."""
    try:
        return Path(str(item.path)).resolve().relative_to(REPO / "tests").parts[0]
    except ValueError:
        return ""


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    """A real SeaweedFS server (the embedded default) on free loopback ports."""
    base = free_port_base(30000, 40000)
    server = EmbeddedS3(tmp_path_factory.mktemp("seaweed"), port=free_port(), port_base=base,
                        bucket="brain-tumor-test")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_settings(moto_endpoint: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings against the session's moto server, with a fresh bucket per call."""

    def make(**overrides: object) -> Settings:
        values: dict = {"s3_endpoint_url": moto_endpoint, "s3_bucket": f"t-{uuid.uuid4().hex[:16]}",
                        "home": tmp_path / "home", "io_workers": 4, **MOTO_KEYS}
        values.update(overrides)
        return load_settings(env={}, **values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Settings with a fresh bucket on the moto server."""
    return make_settings()


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    """The bucket of ``settings``, created."""
    s = ObjectStore.from_settings(settings)
    s.ensure_bucket()
    return s


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder for synthetic exports shared by the session (write-once, by spec)."""
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="session")
def trained(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory):
    """One tiny model version trained once per session on a synthetic dataset version.

    Returns (settings, model record). Tests read from its bucket and never write to it.
    """
    from brain_tumor import steps
    from brain_tumor.devtools.synth import SynthSpec, make_export
    from brain_tumor.ingest.exports import upload_export

    home = tmp_path_factory.mktemp("trained-home")
    settings = load_settings(env={}, s3_endpoint_url=moto_endpoint, s3_bucket="trained-session",
                             home=home, **MOTO_KEYS, **TINY_TRAINING)
    root = make_export(home / "export", SynthSpec(patients=10, slices=6, size=32, seed=3,
                                                  tumor_free_patients=1)).root
    upload_export(steps.open_store(settings), settings, root, export_id="e1")
    steps.ingest(settings, ["e1"])
    steps.split(settings)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    record = steps.train(settings, verbose=0)
    return settings, record


@pytest.fixture(scope="session")
def evaluated(trained):
    """The session model evaluated once on its own test patients: (settings, record, metrics)."""
    from brain_tumor import steps
    from brain_tumor.evaluation.run import evaluate_model_version

    settings, record = trained
    metrics = evaluate_model_version(steps.open_store(settings), settings, record["model_version"])
    return settings, record, metrics


# --- Airflow (SQLite metadata DB, DAGs parsed from dags/) ---
DAGS = REPO / "dags"
AIRFLOW = Path(sys.executable).parent / "airflow"


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's metadata DB migrated (``airflow db migrate``, idempotent) once per session."""
    proc = subprocess.run([str(AIRFLOW), "db", "migrate"], capture_output=True, text=True,
                          timeout=300, env=os.environ.copy())
    if proc.returncode != 0:
        pytest.fail(f"`airflow db migrate` failed ({proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    proc = subprocess.run([str(AIRFLOW), "pools", "set", "brain_tumor_gpu", "1",
                           "GPUs for training"],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    if proc.returncode != 0:
        pytest.fail(f"`airflow pools set` failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


@pytest.fixture(scope="session")
def dagbag() -> Any:
    """Every DAG in dags/, parsed the way the DAG processor parses them."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture
def get_dag(dagbag: Any, airflow_db: None) -> Callable[[str], Any]:
    """A DAG by id, freshly parsed and without retries, for ``dag.test()`` (failures fail fast)."""
    from airflow.dag_processing.dagbag import DagBag

    def get(dag_id: str) -> Any:
        assert not dagbag.import_errors, dagbag.import_errors
        fresh = DagBag(dag_folder=dagbag.dags[dag_id].fileloc)
        dag = fresh.dags[dag_id]
        for t in dag.tasks:
            t.retries = 0
        return dag

    return get


@pytest.fixture
def task_settings(make_settings: Callable[..., Settings],
                  monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with a fresh moto bucket, also put in the environment for the DAG's tasks."""
    from brain_tumor.settings import load_settings

    settings = make_settings(**{**TINY_TRAINING, "epochs": 12, "seg_epochs": 12, "batch_size": 8},
                             gate_min_sensitivity=0.2, gate_min_roc_auc=0.7, gate_min_dice=0.05)
    for name, value in settings_to_env(settings).items():
        monkeypatch.setenv(name, value)
    assert load_settings() == settings
    return settings
