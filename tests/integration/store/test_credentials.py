"""Where S3 credentials come from, against SeaweedFS (which checks every request's signature).

Explicit keys in the settings; an Airflow ``aws`` connection (``BRAIN_TUMOR_S3_CONN_ID``, here an
``AIRFLOW_CONN_<ID>`` variable) for tasks and the local trainer process; boto3's default chain
through ``AWS_*`` variables when the settings hold no keys; the embedded server's own keys on
its own endpoint. Refused or missing credentials fail with a StorageError that names the
endpoint and never the secret.
"""

from __future__ import annotations

import json
import sys
import uuid

import pytest

from brain_tumor.devtools import embedded_s3
from brain_tumor.settings import Settings, SettingsError, load_settings
from brain_tumor.store.storage import ObjectStore, StorageError
from brain_tumor_airflow.storage import S3ConnectionError, connection_settings
from brain_tumor_airflow.trainer import TrainerBashOperator

pytestmark = pytest.mark.seaweedfs

WRONG = "not-the-secret-4242"
UNREACHABLE = "http://127.0.0.1:9"
CONN_ID = "bt_credentials_s3"


def _round_trip(settings: Settings) -> None:
    store = ObjectStore.from_settings(settings)
    key = f"credentials/{uuid.uuid4().hex}.txt"
    assert store.put_new(key, b"signed")
    assert store.get(key) == b"signed"


def _refused(settings: Settings, endpoint: str) -> StorageError:
    with pytest.raises(StorageError) as err:
        list(ObjectStore.from_settings(settings).list("credentials/"))
    message = str(err.value)
    assert endpoint in message, message
    assert WRONG not in message and WRONG not in repr(err.value.__cause__), message
    return err.value


def _connection(monkeypatch: pytest.MonkeyPatch, login: str, password: str,
                endpoint: str) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(
        {"conn_type": "aws", "login": login, "password": password,
         "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}))


def test_explicit_keys(seaweed):
    def keyed(secret: str) -> Settings:
        return load_settings(env={}, s3_endpoint_url=seaweed.endpoint, s3_bucket=seaweed.bucket,
                             s3_access_key_id=seaweed.access_key, s3_secret_access_key=secret,
                             s3_max_attempts=1)

    _round_trip(keyed(seaweed.secret_key))
    error = _refused(keyed(WRONG), seaweed.endpoint)
    assert "refused the credentials" in str(error)
    assert f"access key id {seaweed.access_key!r}" in str(error)


def test_keys_go_together():
    with pytest.raises(SettingsError, match="go together.*received only s3_secret_access_key") \
            as err:
        load_settings(env={"BRAIN_TUMOR_S3_SECRET_ACCESS_KEY": WRONG})
    assert WRONG not in str(err.value)


def test_airflow_connection_gives_endpoint_and_keys(seaweed, monkeypatch):
    _connection(monkeypatch, seaweed.access_key, seaweed.secret_key, seaweed.endpoint)
    settings = load_settings(env={}, s3_endpoint_url=UNREACHABLE, s3_bucket=seaweed.bucket,
                             s3_conn_id=CONN_ID, s3_max_attempts=1)
    resolved = connection_settings(settings)
    assert resolved.s3_endpoint_url == seaweed.endpoint
    assert resolved.s3_access_key_id == seaweed.access_key
    _round_trip(resolved)
    # the keys really come from the connection: a wrong password there is refused
    _connection(monkeypatch, seaweed.access_key, WRONG, seaweed.endpoint)
    _refused(connection_settings(settings), seaweed.endpoint)


def test_connection_without_keys_leaves_signing_to_the_default_chain(seaweed, monkeypatch):
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(
        {"conn_type": "aws", "extra": {"endpoint_url": seaweed.endpoint}}))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    resolved = connection_settings(load_settings(env={}, s3_bucket=seaweed.bucket,
                                                 s3_conn_id=CONN_ID))
    assert resolved.s3_endpoint_url == seaweed.endpoint and resolved.s3_keys() is None
    _round_trip(resolved)


def test_a_missing_connection_is_named(monkeypatch):
    monkeypatch.delenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", raising=False)
    with pytest.raises(S3ConnectionError, match=f"'{CONN_ID}', which does not exist"):
        connection_settings(load_settings(env={}, s3_conn_id=CONN_ID))


def test_the_local_trainer_process_gets_the_connection(seaweed, monkeypatch, tmp_path):
    """TrainerBashOperator hands its process the connection's endpoint and keys."""
    _connection(monkeypatch, seaweed.access_key, seaweed.secret_key, seaweed.endpoint)
    for name, value in {"BRAIN_TUMOR_S3_ENDPOINT_URL": UNREACHABLE,
                        "BRAIN_TUMOR_S3_BUCKET": seaweed.bucket, "BRAIN_TUMOR_S3_CONN_ID": CONN_ID,
                        "BRAIN_TUMOR_HOME": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    key = f"credentials/{uuid.uuid4().hex}.txt"
    script = tmp_path / "write.py"
    script.write_text("from brain_tumor.settings import load_settings\n"
                      "from brain_tumor.store.storage import ObjectStore\n"
                      f"ObjectStore.from_settings(load_settings()).put({key!r}, b'local')\n")
    op = TrainerBashOperator(task_id="train", bash_command=f"{sys.executable} {script}")
    op.execute({})
    settings = load_settings(env={}, s3_endpoint_url=seaweed.endpoint, s3_bucket=seaweed.bucket,
                             s3_access_key_id=seaweed.access_key,
                             s3_secret_access_key=seaweed.secret_key)
    assert ObjectStore.from_settings(settings).get(key) == b"local"


def test_default_chain_through_aws_variables(seaweed, monkeypatch):
    settings = load_settings(env={}, s3_endpoint_url=seaweed.endpoint, s3_bucket=seaweed.bucket,
                             s3_max_attempts=1)
    assert settings.s3_keys() is None
    with pytest.raises(StorageError, match="no S3 credentials found") as err:
        list(ObjectStore.from_settings(settings).list("credentials/"))
    assert seaweed.endpoint in str(err.value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    _round_trip(settings)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG)
    assert "default credential chain" in str(_refused(settings, seaweed.endpoint))


def test_the_embedded_endpoint_signs_with_the_embedded_keys(seaweed):
    """Out of the box: no keys anywhere, the endpoint is the embedded server's own."""
    settings = load_settings(env={}, s3_endpoint_url=f"http://localhost:{seaweed.port}/",
                             embedded_s3_port=seaweed.port, s3_bucket=seaweed.bucket)
    assert settings.s3_is_embedded and settings.s3_access_key_id is None
    server = embedded_s3.from_settings(settings)
    assert (server.access_key, server.secret_key) == (seaweed.access_key, seaweed.secret_key)
    _round_trip(settings)
