"""The retraining DAG's training task through DockerOperator, on the trainer image of this commit.

GPU requests are switched off (BRAIN_TUMOR_DOCKER_GPUS=0: no GPU here); everything else is the
production path: the operator takes image, engine and environment from the settings, the
container reaches S3 over the host network, and the DAG goes on from the model it published.
"""

from __future__ import annotations

import pytest

from brain_tumor import steps
from brain_tumor.devtools.synth import SynthSpec, make_export
from brain_tumor.ingest.exports import upload_export
from brain_tumor.store.modelstore import ModelStore

pytestmark = pytest.mark.docker


def test_training_runs_in_the_trainer_image(get_dag, task_settings, trainer_image, monkeypatch,
                                            tmp_path, docker_timings) -> None:
    for name, value in {"BRAIN_TUMOR_TRAINER": "docker", "BRAIN_TUMOR_TRAINER_IMAGE": trainer_image,
                        "BRAIN_TUMOR_DOCKER_GPUS": "0", "BRAIN_TUMOR_DOCKER_NETWORK_MODE": "host",
                        "BRAIN_TUMOR_DOCKER_URL": "unix://var/run/docker.sock"}.items():
        monkeypatch.setenv(name, value)
    root = make_export(tmp_path / "e1", SynthSpec(patients=12, slices=6, size=32, seed=1)).root
    upload_export(steps.open_store(task_settings), task_settings, root, export_id="e1")

    dag = get_dag("retrain_nightly")
    assert type(dag.get_task("train")).__name__ == "TrainerDockerOperator"
    dag_run = dag.test()

    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    assert states["train"] == "success", states
    assert states["evaluate"] == "success" and states["gate"] == "success", states
    candidate = dag_run.get_task_instance("evaluate").xcom_pull(task_ids="evaluate")
    models = ModelStore(steps.open_store(task_settings), task_settings)
    record = models.record(candidate["model_version"])
    assert record["keras_backend"] == "tensorflow" and record["backbone"] == "tiny"
    assert states["promote"] == "success" or states["reject"] == "success"
