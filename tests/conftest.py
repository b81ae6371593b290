"""Session-wide fixtures: one S3 server per test session, small synthetic exports, Airflow home.

Tests talk to real S3 servers on 127.0.0.1: moto's server for most (each test gets its own
bucket), SeaweedFS (`weed mini`, the embedded default) where marked.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from brain_tumor.embedded_s3 import EmbeddedS3
from brain_tumor.settings import Settings, load_settings
from brain_tumor.storage import ObjectStore
from support import TINY_TRAINING, free_port, ports_free

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"


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
    rng = random.Random()
    base = next((b for b in (rng.randrange(30000, 40000) for _ in range(50)) if ports_free(b)),
                None)
    if base is None:
        pytest.fail("no free port range for SeaweedFS")
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
                        "home": tmp_path / "home", "io_workers": 4}
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
    from brain_tumor.exports import upload_export
    from brain_tumor.synth import SynthSpec, make_export

    home = tmp_path_factory.mktemp("trained-home")
    settings = load_settings(env={}, s3_endpoint_url=moto_endpoint, s3_bucket="trained-session",
                             home=home, **TINY_TRAINING)
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
    """The session model evaluated once on its own dataset's test patients: (settings, record, metrics)."""
    from brain_tumor import steps
    from brain_tumor.evaluation_run import evaluate_model_version

    settings, record = trained
    metrics = evaluate_model_version(steps.open_store(settings), settings, record["model_version"])
    return settings, record, metrics
