"""The training task's container settings: environment, secrets, S3 connection, mounts."""

from __future__ import annotations

import json

import pytest

from brain_tumor.settings import load_settings
from brain_tumor_airflow.storage import connection_settings
from brain_tumor_airflow.trainer import (
    CONTAINER_HOME,
    _mounts,
    container_environment,
    tls_options,
    train_task,
)


def test_secrets_go_to_the_private_environment():
    settings = load_settings(env={}, s3_bucket="b", image_size=64, s3_access_key_id="AKIA-set",
                             s3_secret_access_key="set-secret")
    public, private = container_environment(settings)
    assert public["BRAIN_TUMOR_S3_BUCKET"] == "b" and public["BRAIN_TUMOR_IMAGE_SIZE"] == "64"
    assert public["BRAIN_TUMOR_HOME"] == CONTAINER_HOME and public["KERAS_BACKEND"] == "tensorflow"
    assert private == {"BRAIN_TUMOR_S3_ACCESS_KEY_ID": "AKIA-set",
                       "BRAIN_TUMOR_S3_SECRET_ACCESS_KEY": "set-secret"}
    assert not any("SECRET" in k or "ACCESS_KEY" in k for k in public)
    # keys unset: none handed over, the container's own default credential chain signs
    assert container_environment(load_settings(env={}))[1] == {}


def test_an_airflow_connection_replaces_the_s3_settings(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_TRAINER_S3", json.dumps(
        {"conn_type": "aws", "login": "AKIA-conn", "password": "conn-secret",
         "extra": {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"}}))
    settings = connection_settings(load_settings(env={}, s3_conn_id="trainer_s3"))
    public, private = container_environment(settings)
    assert public["BRAIN_TUMOR_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert public["BRAIN_TUMOR_S3_REGION"] == "eu-west-1"
    assert private == {"BRAIN_TUMOR_S3_ACCESS_KEY_ID": "AKIA-conn",
                       "BRAIN_TUMOR_S3_SECRET_ACCESS_KEY": "conn-secret"}


def test_mounts_are_parsed_and_bad_ones_named():
    mounts = _mounts("/data:/data:ro, /cache:/root/.keras")
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in mounts] == [
        ("/data", "/data", True), ("/cache", "/root/.keras", False)]
    assert _mounts("") == []
    with pytest.raises(ValueError, match="received '/only-one-part'"):
        _mounts("/only-one-part")
    with pytest.raises(ValueError, match="received '/a:/b:rx'"):
        _mounts("/a:/b:rx")


def test_trainer_choice():
    assert type(train_task("local", "ds-1", "p")).__name__ == "TrainerBashOperator"
    assert type(train_task("docker", "ds-1", "p")).__name__ == "TrainerDockerOperator"
    with pytest.raises(ValueError, match="received 'k8s'"):
        train_task("k8s", "ds-1", "p")


def test_tls_certificates_for_the_gpu_hosts_engine():
    assert tls_options(load_settings(env={})) == {}
    full = load_settings(env={}, docker_url="tcp://gpu-1:2376", docker_tls_ca_cert="/c/ca.pem",
                         docker_tls_client_cert="/c/cert.pem", docker_tls_client_key="/c/key.pem")
    assert tls_options(full) == {"tls_ca_cert": "/c/ca.pem", "tls_client_cert": "/c/cert.pem",
                                 "tls_client_key": "/c/key.pem", "tls_verify": True}
    with pytest.raises(ValueError, match="received cert='/c/cert.pem', key=None"):
        tls_options(load_settings(env={}, docker_tls_client_cert="/c/cert.pem"))


def test_the_operator_hands_the_certificates_to_the_docker_hook(monkeypatch, tmp_path):
    from airflow.providers.docker.operators.docker import DockerOperator

    settings = {"BRAIN_TUMOR_DOCKER_URL": "tcp://gpu-1:2376", "BRAIN_TUMOR_DOCKER_GPUS": "0",
                "BRAIN_TUMOR_DOCKER_TLS_CA_CERT": str(tmp_path / "ca.pem"),
                "BRAIN_TUMOR_DOCKER_TLS_CLIENT_CERT": str(tmp_path / "cert.pem"),
                "BRAIN_TUMOR_DOCKER_TLS_CLIENT_KEY": str(tmp_path / "key.pem")}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    seen = {}
    monkeypatch.setattr(DockerOperator, "execute",
                        lambda self, context: seen.update(vars(self)) or "ran")
    op = train_task("docker", "ds-1", "p")
    assert op.execute({}) == "ran"
    assert seen["docker_url"] == "tcp://gpu-1:2376" and seen["device_requests"] is None
    assert (seen["tls_ca_cert"], seen["tls_client_cert"], seen["tls_client_key"]) == (
        str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    assert seen["tls_verify"] is True
