"""The training task: `brain-tumor train` in the trainer image (DockerOperator) or as a process.

Which one is a setting (``BRAIN_TUMOR_TRAINER=docker|local``). Both run the same command with the
same ``BRAIN_TUMOR_*`` settings, so they publish the same model version. The Docker path takes the
image, engine URL (with TLS certificates when set), GPU request, network and mounts from the
settings. Both take the S3 endpoint and keys from the Airflow connection
``BRAIN_TUMOR_S3_CONN_ID`` when one is named (``brain_tumor_airflow.storage``), resolved when the
task runs; secrets travel in the container's private environment or the process's environment,
never in rendered templates or logs.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

from airflow.providers.docker.operators.docker import DockerOperator
from airflow.providers.standard.operators.bash import BashOperator

from brain_tumor_airflow.storage import task_settings

TRAIN_ARGS = ["--json", "train", "--dataset-version"]
CONTAINER_HOME = "/tmp/brain-tumor"
SECRET_KEYS = ("BRAIN_TUMOR_S3_ACCESS_KEY_ID", "BRAIN_TUMOR_S3_SECRET_ACCESS_KEY")


def _mounts(spec: str) -> list:
    from docker.types import Mount

    mounts = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        parts = item.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise ValueError(f"docker mount must be host:container[:ro|rw], received {item!r}")
        mounts.append(Mount(target=parts[1], source=parts[0], type="bind",
                            read_only=len(parts) == 3 and parts[2] == "ro"))
    return mounts


def container_environment(settings: Any) -> tuple[dict, dict]:
    """(public, private) environment for the trainer container; private holds the set keys."""
    from brain_tumor.settings import settings_to_env

    env = settings_to_env(settings)
    env["KERAS_BACKEND"] = settings.keras_backend
    env["BRAIN_TUMOR_HOME"] = CONTAINER_HOME  # the worker's home path means nothing in there
    private = {k: value for k in SECRET_KEYS if (value := env.pop(k))}
    return env, private


def tls_options(settings: Any) -> dict[str, Any]:
    """DockerOperator's TLS arguments from the settings (empty: plain connection)."""
    cert, key = settings.docker_tls_client_cert, settings.docker_tls_client_key
    if bool(cert) != bool(key):
        raise ValueError("BRAIN_TUMOR_DOCKER_TLS_CLIENT_CERT and ..._CLIENT_KEY go together; "
                         f"received cert={cert!r}, key={key!r}")
    if not (settings.docker_tls_ca_cert or cert):
        return {}
    return {"tls_ca_cert": settings.docker_tls_ca_cert, "tls_client_cert": cert,
            "tls_client_key": key, "tls_verify": bool(settings.docker_tls_ca_cert)}


class TrainerDockerOperator(DockerOperator):
    """DockerOperator whose image, engine, GPUs and environment come from the worker's settings."""

    def __init__(self, *, dataset_version: str, **kwargs: Any) -> None:
        super().__init__(image="brain-tumor-trainer", command=[*TRAIN_ARGS, dataset_version],
                         mount_tmp_dir=False, auto_remove="success", **kwargs)

    def execute(self, context: Any) -> Any:
        """Fill in the settings at run time (not at DAG parse time), then run the container."""
        from docker.types import DeviceRequest

        settings = task_settings()
        # DockerOperator reads the private part from _private_environment (kept out of the
        # rendered template fields and the task's logs)
        self.environment, self._private_environment = container_environment(settings)
        self.image = settings.trainer_image
        self.docker_url = settings.docker_url
        self.network_mode = settings.docker_network_mode
        self.mounts = _mounts(settings.docker_mounts)
        for name, value in tls_options(settings).items():
            setattr(self, name, value)
        self.device_requests = ([DeviceRequest(count=settings.docker_gpus, capabilities=[["gpu"]])]
                                if settings.docker_gpus != 0 else None)
        self.log.info("training in %s on %s (GPUs: %s)", self.image, self.docker_url,
                      "all" if settings.docker_gpus == -1 else settings.docker_gpus)
        return super().execute(context)


class TrainerBashOperator(BashOperator):
    """BashOperator for `brain-tumor train` on the worker, S3 connection resolved at run time."""

    def execute(self, context: Any) -> Any:
        """Hand the process the S3 endpoint and keys of BRAIN_TUMOR_S3_CONN_ID, then run it."""
        from brain_tumor.settings import settings_to_env

        settings = task_settings()
        if settings.s3_conn_id:  # set here, after templates were rendered: never shown
            self.env = {**(self.env or {}), **settings_to_env(settings)}
            self.append_env = True
        return super().execute(context)


def train_task(trainer: str, dataset_version: str, pool: str, ml_queue: str | None = None,
               execution_timeout: timedelta | None = None) -> Any:
    """The train task for the chosen trainer ('docker' or 'local').

    A local training needs TensorFlow on the worker, so it goes to ``ml_queue`` when one is
    given; the Docker one only talks to the GPU host's engine and stays on the default queue.
    ``execution_timeout`` bounds each try (None: the DAG's default).
    """
    extra: dict[str, Any] = {}
    if execution_timeout is not None:
        extra["execution_timeout"] = execution_timeout
    if trainer == "docker":
        return TrainerDockerOperator(task_id="train", dataset_version=dataset_version, pool=pool,
                                     **extra)
    if trainer != "local":
        raise ValueError(f"trainer must be 'docker' or 'local', received {trainer!r}")
    command = " ".join([sys.executable, "-m", "brain_tumor.cli", *TRAIN_ARGS, dataset_version])
    if ml_queue:
        extra["queue"] = ml_queue
    return TrainerBashOperator(task_id="train", bash_command=command, pool=pool, **extra)
