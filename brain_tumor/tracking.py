"""Optional MLflow mirror of trainings, evaluations and the champion.

Off unless ``mlflow_tracking_uri`` is set. Each training is one MLflow run (tagged with its model
version) holding the settings as params, the per-epoch history as metrics, the model files and
records as artifacts, and a version of the registered model ``mlflow_model_name``; evaluations
add their metrics, plots and model card to that run; every promotion and rollback moves the
registered model's ``champion`` alias. The S3 registry event log stays the source of truth: a
mirror that fails is retried a few times, then logged, and never fails the caller.
mlflow is imported inside the functions (the ``mlflow`` extra).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from brain_tumor.settings import Settings

log = logging.getLogger(__name__)

#: tag naming the project's model version, on MLflow runs and registered model versions
MODEL_VERSION_TAG = "brain_tumor_model_version"
ALIAS = "champion"
ATTEMPTS = 3
RETRY_DELAY_S = 1.0
#: HTTP retries and timeout of each MLflow request (mlflow's own defaults wait minutes)
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
_BATCH = 100  # params per log_batch call (MLflow's limit); metrics go 1000 a call

T = TypeVar("T")


def enabled(settings: Settings) -> bool:
    """Whether the settings name an MLflow tracking server."""
    return bool(settings.mlflow_tracking_uri)


def _client(settings: Settings) -> Any:
    """An MlflowClient for the tracking server (also its model registry)."""
    for name, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient

    uri = settings.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _retry(what: str, action: Callable[[], T]) -> T | None:
    """action's result, tried ATTEMPTS times; None (and an error logged) when every try failed."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return action()
        except ImportError as exc:
            log.error("MLflow: cannot %s: mlflow is not installed (the 'mlflow' extra): %s",
                      what, exc)
            return None
        except Exception as exc:  # any failure of the mirror: MLflow, network, S3
            if attempt == ATTEMPTS:
                log.error("MLflow: could not %s after %d attempts (the S3 registry is unaffected)"
                          ": %s: %s", what, ATTEMPTS, type(exc).__name__, exc)
                return None
            log.warning("MLflow: %s failed (attempt %d of %d), retrying: %s: %s", what, attempt,
                        ATTEMPTS, type(exc).__name__, exc)
            time.sleep(RETRY_DELAY_S * attempt)
    return None


def flat_params(values: dict[str, Any]) -> dict[str, str]:
    """Settings as MLflow params: every value a string, None as ''."""
    return {k: "" if v is None else str(v) for k, v in values.items()}


def history_metrics(history: dict[str, dict[str, list[float]]]) -> list[tuple[str, float, int]]:
    """(name, value, step) per model, history key and epoch: 'classifier.val_auc' at step 0..."""
    return [(f"{model}.{key}", float(value), step)
            for model, keys in history.items() for key, values in keys.items()
            for step, value in enumerate(values)]


def numeric_leaves(data: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number of a nested JSON record, keyed by its dotted path."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(numeric_leaves(value, f"{prefix}{key}."))
    elif isinstance(data, bool) or data is None:
        pass
    elif isinstance(data, int | float) and data == data and abs(data) != float("inf"):
        out[prefix.rstrip(".")] = float(data)
    return out


def _chunks(items: list[T], size: int) -> Iterable[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def _find_run(client: Any, settings: Settings, model_version: str) -> Any:
    """The MLflow run of a model version's training, or None."""
    found = client.get_experiment_by_name(settings.mlflow_experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id],
                              f"tags.{MODEL_VERSION_TAG} = '{model_version}'", max_results=1)
    return runs[0] if runs else None


def _find_version(client: Any, settings: Settings, model_version: str) -> Any:
    """The registered model version that stands for a model version, or None."""
    found = client.search_model_versions(
        f"name = '{settings.mlflow_model_name}' and "
        f"tags.{MODEL_VERSION_TAG} = '{model_version}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)


def _log_training(client: Any, settings: Settings, record: dict[str, Any],
                  history: dict[str, dict[str, list[float]]], local_dir: Path) -> str:
    from mlflow.entities import Metric, Param

    version = record["model_version"]
    run = _find_run(client, settings, version)
    if run is None:
        run = client.create_run(_experiment_id(client, settings.mlflow_experiment),
                                run_name=version,
                                tags={MODEL_VERSION_TAG: version,
                                      "brain_tumor_dataset_version": record["dataset_version"],
                                      "brain_tumor_code_version": record["code_version"]})
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in sorted(flat_params(settings.public_dict()).items())]
    for chunk in _chunks(params, _BATCH):
        client.log_batch(run_id, params=chunk)
    now = int(time.time() * 1000)
    metrics = [Metric(name, value, now, step) for name, value, step in history_metrics(history)]
    metrics += [Metric(name, value, now, 0) for name, value in numeric_leaves(
        {k: record[k] for k in ("threshold", "train_slices", "val_slices", "best_epochs")
         if k in record}).items()]
    for chunk in _chunks(metrics, 1000):
        client.log_batch(run_id, metrics=chunk)
    client.log_artifacts(run_id, str(local_dir), "model")
    client.log_dict(run_id, record, "model/model.json")
    if _find_version(client, settings, version) is None:
        _ensure_registered_model(client, settings.mlflow_model_name)
        client.create_model_version(settings.mlflow_model_name, f"{run.info.artifact_uri}/model",
                                    run_id=run_id, tags={MODEL_VERSION_TAG: version})
    client.set_terminated(run_id, "FINISHED")
    return run_id


def log_training(settings: Settings, record: dict[str, Any],
                 history: dict[str, dict[str, list[float]]], local_dir: Path) -> str | None:
    """Mirror a finished training to MLflow; the run id, or None when off or it failed."""
    if not enabled(settings):
        return None
    run_id = _retry(f"log the training of {record['model_version']}",
                    lambda: _log_training(_client(settings), settings, record, history,
                                          local_dir))
    if run_id:
        log.info("MLflow: training of %s logged as run %s", record["model_version"], run_id)
    return run_id


def _log_evaluation(client: Any, settings: Settings, model_version: str, dataset_version: str,
                    metrics: dict[str, Any], files: dict[str, bytes]) -> str | None:
    from mlflow.entities import Metric

    run = _find_run(client, settings, model_version)
    if run is None:
        log.info("MLflow: no run for %s (trained without MLflow): evaluation not mirrored",
                 model_version)
        return None
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    values = [Metric(f"test.{name}", value, now, 0)
              for name, value in numeric_leaves(metrics).items()]
    for chunk in _chunks(values, 1000):
        client.log_batch(run_id, metrics=chunk)
    client.set_tag(run_id, "brain_tumor_evaluated_on", dataset_version)
    with tempfile.TemporaryDirectory(prefix="brain-tumor-mlflow-") as tmp:
        folder = Path(tmp)
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        for name, body in files.items():
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"evaluation file names must be relative, received {name!r}")
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(body)
        client.log_artifacts(run_id, tmp, f"evaluations/{dataset_version}")
    return run_id


def log_evaluation(settings: Settings, model_version: str, dataset_version: str,
                   metrics: dict[str, Any], files: dict[str, bytes] | None = None) -> str | None:
    """Add an evaluation (metrics, and files such as the plots and model card, by relative
    name) to the model version's MLflow run; the run id, or None when off, absent or failed."""
    if not enabled(settings):
        return None
    return _retry(f"log the evaluation of {model_version} on {dataset_version}",
                  lambda: _log_evaluation(_client(settings), settings, model_version,
                                          dataset_version, metrics, files or {}))


def _mirror(client: Any, settings: Settings, event: dict[str, Any]) -> str:
    version = event["model_version"]
    found = _find_version(client, settings, version)
    if found is None:  # trained without MLflow: register the model files where they lie in S3
        _ensure_registered_model(client, settings.mlflow_model_name)
        source = f"s3://{settings.s3_bucket}/{settings.key('models', version)}/"
        found = client.create_model_version(settings.mlflow_model_name, source,
                                            tags={MODEL_VERSION_TAG: version})
    client.set_registered_model_alias(settings.mlflow_model_name, ALIAS, found.version)
    client.set_model_version_tag(settings.mlflow_model_name, found.version,
                                 "brain_tumor_registry_event", str(event["seq"]))
    return str(found.version)


def mirror_champion(settings: Settings, event: dict[str, Any]) -> str | None:
    """Point the registered model's 'champion' alias at the champion a registry event set;
    the MLflow version, or None when off, not a champion move, or it failed."""
    if not enabled(settings) or event.get("action") not in ("promoted", "rolled_back"):
        return None
    mlflow_version = _retry(f"move the {ALIAS} alias to {event['model_version']}",
                            lambda: _mirror(_client(settings), settings, event))
    if mlflow_version:
        log.info("MLflow: %s alias of %s now on version %s (%s, event %s)", ALIAS,
                 settings.mlflow_model_name, mlflow_version, event["model_version"],
                 event["seq"])
    return mlflow_version
