"""The CPU trainer image, built from the working tree: its CLI runs, and a tiny training run inside
the container publishes a model version to the session's S3 server (moto on the host loopback,
reached through the host network, as the DockerOperator's ``network_mode="host"`` does)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from brain_tumor import steps
from brain_tumor.devtools.synth import SynthSpec, make_export
from brain_tumor.ingest.exports import upload_export
from brain_tumor.settings import Settings, settings_to_env
from brain_tumor.store.modelstore import ModelStore

pytestmark = pytest.mark.docker

CONTAINER_TIMEOUT_S = 600


def _run(client, image: str, command: list[str], **kwargs) -> tuple[int, str, str]:
    """Run a container to completion: (exit code, stdout, stderr); always removed."""
    container = client.containers.run(image, command, detach=True, **kwargs)
    try:
        status = container.wait(timeout=CONTAINER_TIMEOUT_S)
        out = container.logs(stdout=True, stderr=False).decode()
        err = container.logs(stdout=False, stderr=True).decode()
        return status["StatusCode"], out, err
    finally:
        container.remove(force=True)


def test_image_runs_the_cli(docker_client, trainer_image: str) -> None:
    code, out, err = _run(docker_client, trainer_image, ["--help"], network_mode="none")
    assert code == 0, err
    assert out.startswith("usage: brain-tumor")
    for command in ("train", "evaluate", "settings"):
        assert command in out

    config = docker_client.images.get(trainer_image).attrs["Config"]
    assert config["Entrypoint"] == ["brain-tumor"]
    assert config["User"] and not config["User"].startswith(("0", "root"))
    assert config["Labels"]["brain-tumor.variant"] == "cpu"
    assert config["Labels"]["org.opencontainers.image.revision"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["KERAS_BACKEND"] == "tensorflow"


def test_image_has_the_mlflow_client(docker_client, trainer_image: str) -> None:
    """Training in the container can mirror to MLflow: the client of the tracking extra
    (``mlflow.tracking`` holds the ``MlflowClient`` the mirror uses)."""
    code, out, err = _run(
        docker_client, trainer_image,
        ["-c", "import mlflow, mlflow.tracking; print(mlflow.__version__)"],
        entrypoint=["python"], network_mode="none")
    assert code == 0, err
    assert out.strip().split(".")[0].isdigit(), out


def test_training_in_the_container_publishes_a_model(docker_client, trainer_image: str,
                                                     make_settings, tmp_path: Path,
                                                     docker_timings: dict) -> None:
    settings: Settings = make_settings(
        backbone="tiny", image_size=32, batch_size=16, epochs=1, seg_epochs=1, seg_depth=2,
        seg_base_filters=8, warmup_epochs=0, bootstrap_samples=50, io_workers=4)
    root = make_export(tmp_path / "export", SynthSpec(patients=8, slices=6, size=32, seed=5,
                                                      tumor_free_patients=1)).root
    upload_export(steps.open_store(settings), settings, root, export_id="e1")
    steps.ingest(settings, ["e1"])
    dataset_version = steps.split(settings)["dataset_version"]

    # the settings travel as BRAIN_TUMOR_* variables, as the DAG hands them to the container
    env = settings_to_env(settings)
    env["BRAIN_TUMOR_HOME"] = "/tmp/brain-tumor"   # a path inside the container
    t = time.monotonic()
    code, out, err = _run(docker_client, trainer_image, ["--json", "train"], environment=env,
                          network_mode="host")
    docker_timings["training in the container"] = time.monotonic() - t
    assert code == 0, err[-5000:]
    record = json.loads(out)

    assert record["dataset_version"] == dataset_version
    assert record["backbone"] == "tiny" and record["keras_backend"] == "tensorflow"
    models = ModelStore(steps.open_store(settings), settings)
    assert models.exists(record["model_version"])
    assert models.record(record["model_version"])["model_version"] == record["model_version"]
