"""MLflow mirror against a real `mlflow server` on loopback (SQLite, artifacts in moto's S3).

A tiny training logs a run (params, per-epoch metrics, model files) and registers a model
version; promotions and a rollback move the registered model's champion alias; an evaluation
adds its metrics and model card to the run; with the server down a promotion still succeeds.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from support import TINY_TRAINING, copy_model, free_port, stop_process, unavailable

from brain_tumor import steps, tracking
from brain_tumor.settings import load_settings
from brain_tumor.store.registry import Registry
from brain_tumor.store.storage import ObjectStore

KEYS = {"s3_access_key_id": "moto-test", "s3_secret_access_key": "moto-test-secret"}
MLFLOW = Path(sys.executable).parent / "mlflow"


def _wait_healthy(url: str, proc: subprocess.Popen, log_file: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited ({proc.returncode}):\n"
                        f"{log_file.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after 180 s:\n{log_file.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def mlflow_url(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory):
    """A real MLflow tracking server: SQLite backend, artifacts proxied to a moto S3 bucket."""
    if not MLFLOW.exists():
        unavailable(f"no mlflow executable at {MLFLOW} (install the 'mlflow' extra)")
    home = tmp_path_factory.mktemp("mlflow")
    artifacts = load_settings(env={}, s3_endpoint_url=moto_endpoint, s3_bucket="mlflow-artifacts",
                              **KEYS)
    ObjectStore.from_settings(artifacts).ensure_bucket()
    port = free_port()
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": moto_endpoint,
           "AWS_ACCESS_KEY_ID": KEYS["s3_access_key_id"],
           "AWS_SECRET_ACCESS_KEY": KEYS["s3_secret_access_key"],
           "AWS_DEFAULT_REGION": "us-east-1"}
    log_file = home / "server.log"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--serve-artifacts",
             "--artifacts-destination", "s3://mlflow-artifacts/mlflow"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=home)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log_file)
        yield url
    finally:
        stop_process(proc, timeout=30)


@pytest.fixture(scope="module")
def tracked(mlflow_url: str, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory):
    """A tiny model trained with tracking on: (settings, model record)."""
    from brain_tumor.devtools.synth import SynthSpec, make_export
    from brain_tumor.ingest.exports import upload_export

    home = tmp_path_factory.mktemp("tracked-home")
    settings = load_settings(env={}, s3_endpoint_url=moto_endpoint,
                             s3_bucket=f"t-{uuid.uuid4().hex[:16]}", home=home, **KEYS,
                             **TINY_TRAINING, mlflow_tracking_uri=mlflow_url,
                             mlflow_experiment=f"exp-{uuid.uuid4().hex[:8]}",
                             mlflow_model_name=f"detector-{uuid.uuid4().hex[:8]}")
    root = make_export(home / "export", SynthSpec(patients=8, slices=6, size=32, seed=5,
                                                  tumor_free_patients=1)).root
    upload_export(steps.open_store(settings), settings, root, export_id="e1")
    steps.ingest(settings, ["e1"])
    steps.split(settings)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    return settings, steps.train(settings, verbose=0)


def _client(settings):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri,
                        registry_uri=settings.mlflow_tracking_uri)


def _run(settings, model_version: str):
    client = _client(settings)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.{tracking.MODEL_VERSION_TAG} = '{model_version}'")
    assert len(runs) == 1, runs
    return runs[0]


def _champion_tag(settings) -> str:
    client = _client(settings)
    version = client.get_model_version_by_alias(settings.mlflow_model_name, tracking.ALIAS)
    return version.tags[tracking.MODEL_VERSION_TAG]


def test_training_logs_a_run_with_params_history_and_model_files(tracked, tmp_path) -> None:
    settings, record = tracked
    run = _run(settings, record["model_version"])
    assert run.info.status == "FINISHED"
    assert run.data.params["backbone"] == "tiny"
    assert run.data.params["epochs"] == str(TINY_TRAINING["epochs"])
    assert run.data.params["s3_secret_access_key"] == "***"
    client = _client(settings)
    saved = json.loads(Path(client.download_artifacts(
        run.info.run_id, "model/history.json", str(tmp_path))).read_text())
    losses = client.get_metric_history(run.info.run_id, "classifier.loss")
    assert [m.step for m in losses] == list(range(len(losses)))
    assert [m.value for m in losses] == pytest.approx(saved["classifier"]["loss"])
    assert 1 <= len(losses) <= TINY_TRAINING["epochs"]
    dice = client.get_metric_history(run.info.run_id, "segmenter.val_dice_coefficient")
    assert len(dice) == len(saved["segmenter"]["val_dice_coefficient"])
    assert run.data.metrics["threshold"] == pytest.approx(record["threshold"])
    files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/classifier.keras", "model/segmenter.keras", "model/history.json",
            "model/model.json"} <= files
    versions = client.search_model_versions(f"name = '{settings.mlflow_model_name}'")
    assert [v.tags[tracking.MODEL_VERSION_TAG] for v in versions] == [record["model_version"]]
    assert versions[0].run_id == run.info.run_id


def test_promotion_and_rollback_move_the_champion_alias(tracked) -> None:
    settings, record = tracked
    first = record["model_version"]
    steps.promote(settings, first, reason="first champion")
    assert _champion_tag(settings) == first
    # a second model version published without tracking (registered from its S3 files)
    second = copy_model(settings, first, settings, as_version="m-0000000000b2")
    event = steps.decide(settings, {"model_version": second, "passed": True,
                                    "explanation": "passed", "candidate_metrics": None,
                                    "dataset_version": record["dataset_version"],
                                    "champion_version": first})
    assert event["action"] == "promoted"
    assert _champion_tag(settings) == second
    second_source = _client(settings).get_model_version_by_alias(
        settings.mlflow_model_name, tracking.ALIAS).source
    assert second_source.startswith(f"s3://{settings.s3_bucket}/")
    event = steps.rollback(settings, reason="back")
    assert event["model_version"] == first
    assert _champion_tag(settings) == first
    assert Registry(steps.open_store(settings), settings).champion() == first


def test_evaluation_adds_metrics_and_model_card_to_the_run(tracked) -> None:
    settings, record = tracked
    result = steps.evaluate(settings, record["model_version"])
    run = _run(settings, record["model_version"])
    assert run.data.tags["brain_tumor_evaluated_on"] == result["dataset_version"]
    assert any(name.startswith("test.") for name in run.data.metrics)
    folder = f"evaluations/{result['dataset_version']}"
    files = {a.path for a in _client(settings).list_artifacts(run.info.run_id, folder)}
    assert {f"{folder}/model_card.md", f"{folder}/metrics.json", f"{folder}/plots"} <= files
    plots = {a.path for a in _client(settings).list_artifacts(run.info.run_id, f"{folder}/plots")}
    assert f"{folder}/plots/roc.png" in plots


def test_promotion_succeeds_and_logs_when_mlflow_is_down(tracked, caplog, monkeypatch) -> None:
    settings, record = tracked
    down = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}",
                                       "s3_bucket": f"t-{uuid.uuid4().hex[:16]}"})
    copy_model(settings, record["model_version"], down)
    monkeypatch.setattr(tracking, "RETRY_DELAY_S", 0.0)
    with caplog.at_level(logging.WARNING, logger="brain_tumor.tracking"):
        event = steps.promote(down, record["model_version"], reason="mlflow is down")
    assert event["action"] == "promoted"
    assert Registry(steps.open_store(down), down).champion() == record["model_version"]
    failures = [r for r in caplog.records if r.name == "brain_tumor.tracking"]
    assert len(failures) == tracking.ATTEMPTS
    assert "could not move the champion alias" in failures[-1].getMessage()
