"""The pipeline's S3 settings in Airflow: endpoint and credentials from an ``aws`` connection.

When ``BRAIN_TUMOR_S3_CONN_ID`` names a connection, every task (and the trainer it starts) takes
the S3 endpoint (extra ``endpoint_url``, or the ``s3`` entry of ``service_config``), the region
(extra ``region_name``) and the access key from that connection, read through the Amazon
provider's ``AwsBaseHook``; what the connection leaves out stays as the settings have it. A
connection without keys (no login, role or profile) sets only the endpoint and region: boto3's
default credential chain signs. The secret then lives only in the connection (an
``AIRFLOW_CONN_*`` variable or a secrets backend), and the hook masks it in task logs.

Likewise ``BRAIN_TUMOR_DICOMWEB_CONN_ID`` names an ``http`` connection to the PACS: its URL (the
connection's URI ``http://user:password@pacs:8042/dicom-web``, where the path is the schema; or
host, port, schema ``http``/``https`` and extra ``path``) and its login and password replace
``dicomweb_url``, ``dicomweb_username`` and ``dicomweb_password`` (``dicomweb_settings``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr

if TYPE_CHECKING:
    from brain_tumor.settings import Settings


class S3ConnectionError(LookupError):
    """The connection named by BRAIN_TUMOR_S3_CONN_ID is missing or gives unusable credentials."""


def connection_settings(settings: Settings) -> Settings:
    """The settings with the S3 endpoint, region and keys of connection ``s3_conn_id``.

    Unchanged when ``s3_conn_id`` is unset.
    """
    conn_id = settings.s3_conn_id
    if not conn_id:
        return settings
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    hook = AwsBaseHook(aws_conn_id=conn_id, client_type="s3")
    config = hook.conn_config
    if not config:  # the hook itself would fall back to an empty connection
        raise S3ConnectionError(
            f"BRAIN_TUMOR_S3_CONN_ID names the Airflow connection {conn_id!r}, which does not "
            f"exist: define AIRFLOW_CONN_{conn_id.upper()} or add it to the secrets backend")
    update: dict[str, object] = {}
    endpoint = config.get_service_endpoint_url("s3")
    if endpoint:
        update["s3_endpoint_url"] = endpoint
    if config.region_name:
        update["s3_region"] = config.region_name
    if config.aws_access_key_id or config.role_arn or config.profile_name:
        credentials = hook.get_credentials()  # masks the secret in task logs
        if credentials.token:
            raise S3ConnectionError(
                f"the Airflow connection {conn_id!r} gives temporary credentials (a session "
                f"token, e.g. from role_arn), which expire while tasks and trainings still run: "
                f"give it an access key (login and password), or leave the keys out of it so "
                f"that boto3's default credential chain (e.g. the worker's role) signs")
        update["s3_access_key_id"] = credentials.access_key
        update["s3_secret_access_key"] = SecretStr(credentials.secret_key)
    return settings.model_copy(update=update)


class DicomwebConnectionError(LookupError):
    """The connection named by BRAIN_TUMOR_DICOMWEB_CONN_ID is missing or gives no host."""


def dicomweb_url(conn_type: str | None, host: str | None, port: int | None,
                 schema: str | None, path: str | None) -> str:
    """The DICOMweb root an http connection's parts describe.

    ``schema`` is the scheme when it is ``http`` or ``https`` (the http connection's use of it),
    else the path (a connection given as a URI keeps its path there); ``path`` (extra) adds to
    it. A host given with its scheme (``https://pacs``) is taken as the start of the URL.
    """
    if not host:
        raise DicomwebConnectionError("the DICOMweb connection gives no host")
    schema = schema or ""
    if schema.lower() in ("http", "https"):
        scheme, parts = schema.lower(), [(path or "").strip("/")]
    else:
        scheme = conn_type if conn_type in ("http", "https") else "http"
        parts = [schema.strip("/"), (path or "").strip("/")]
    base = host.rstrip("/") if "://" in host else f"{scheme}://{host}"
    if port and "://" not in host:
        base += f":{port}"
    return "/".join([base, *[p for p in parts if p]])


def dicomweb_settings(settings: Settings) -> Settings:
    """The settings with the PACS URL and credentials of connection ``dicomweb_conn_id``.

    Unchanged when ``dicomweb_conn_id`` is unset.
    """
    conn_id = settings.dicomweb_conn_id
    if not conn_id:
        return settings
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise DicomwebConnectionError(
            f"BRAIN_TUMOR_DICOMWEB_CONN_ID names the Airflow connection {conn_id!r}, which does "
            f"not exist: define AIRFLOW_CONN_{conn_id.upper()} or add it to the secrets "
            f"backend") from None
    try:
        url = dicomweb_url(conn.conn_type, conn.host, conn.port, conn.schema,
                           conn.extra_dejson.get("path"))
    except DicomwebConnectionError as exc:
        raise DicomwebConnectionError(f"Airflow connection {conn_id!r}: {exc}") from None
    update: dict[str, object] = {"dicomweb_url": url}
    if conn.login:
        update["dicomweb_username"] = conn.login
        update["dicomweb_password"] = SecretStr(conn.password or "")
    return settings.model_copy(update=update)


def task_settings() -> Settings:
    """The settings of an Airflow task: loaded from the environment, then the S3 and PACS
    connections."""
    from brain_tumor.settings import load_settings

    return dicomweb_settings(connection_settings(load_settings()))
