"""Object storage through the S3 API (boto3): the only module that talks to S3.

Every write is a single PUT (or a completed multipart upload), which S3 makes visible whole or
not at all. Objects are written once: ``put_new`` refuses to replace an existing key, and pointers
that must move use compare-and-swap (``put(..., if_match=etag)``).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pandas as pd
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

if TYPE_CHECKING:
    from brain_tumor.settings import Settings

log = logging.getLogger(__name__)

#: files below this size are sent in one PUT (a transfer manager per file costs more than it saves)
SMALL_FILE = 8 * 2**20
#: error codes of a request whose credentials the server refused (or that they do not allow)
REFUSED = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
                     "Forbidden", "InvalidToken", "ExpiredToken"})
DEFAULT_CHAIN = "boto3's default credential chain"


class StorageError(RuntimeError):
    """An S3 call failed (after retries); the message names the endpoint, bucket and key."""


class KeyNotFound(StorageError, KeyError):
    """The object does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the key exists already, or changed since it was read."""


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object."""

    key: str
    size: int
    etag: str
    last_modified: datetime | None = None


class ObjectStore:
    """A bucket on an S3-compatible server, with retries and clear errors."""

    def __init__(self, client: Any, bucket: str, endpoint: str | None = None,
                 credentials: str = DEFAULT_CHAIN) -> None:
        self.client = client
        self.bucket = bucket
        self.endpoint = endpoint or "AWS S3"
        self.credentials = credentials  # where the keys come from, for errors (never a secret)

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        """Build a store from the S3 settings (endpoint, credentials, retries).

        Requests are signed with ``settings.s3_keys()``: the settings' keys, the embedded
        server's for the embedded endpoint, or else boto3's default credential chain.
        """
        config = Config(
            retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
            connect_timeout=settings.s3_connect_timeout_s,
            read_timeout=60,
            max_pool_connections=max(10, settings.io_workers * 2),
            s3={"addressing_style": "path"},
        )
        keys = settings.s3_keys()
        signing: dict[str, str] = {}
        credentials = DEFAULT_CHAIN
        if keys is not None:
            signing = {"aws_access_key_id": keys[0],
                       "aws_secret_access_key": keys[1].get_secret_value()}
            credentials = f"access key id {keys[0]!r}"
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.s3_region,
            config=config,
            **signing,
        )
        return cls(client, settings.s3_bucket, settings.s3_endpoint_url, credentials)

    # --- errors ---
    def _error(self, exc: Exception, action: str, key: str = "") -> StorageError:
        where = f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound"):
                return KeyNotFound(f"{where} does not exist (endpoint {self.endpoint})")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or status == 412:
                return PreconditionFailed(f"{action} {where}: precondition failed ({code})")
            if code in REFUSED:
                return StorageError(
                    f"{action} {where} failed at {self.endpoint}: the server refused the "
                    f"credentials ({self.credentials}): {code} {exc}; check "
                    f"BRAIN_TUMOR_S3_ACCESS_KEY_ID/..._SECRET_ACCESS_KEY, the connection named by "
                    f"BRAIN_TUMOR_S3_CONN_ID, or the AWS_* variables, profile or role")
            return StorageError(f"{action} {where} failed at {self.endpoint}: {code} {exc}")
        if isinstance(exc, NoCredentialsError):
            return StorageError(
                f"{action} {where} at {self.endpoint}: no S3 credentials found: set "
                f"BRAIN_TUMOR_S3_ACCESS_KEY_ID and ..._SECRET_ACCESS_KEY, a connection "
                f"BRAIN_TUMOR_S3_CONN_ID (Airflow tasks), or credentials for {DEFAULT_CHAIN} "
                f"(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or pod role)")
        return StorageError(f"{action} {where} failed: cannot reach S3 at {self.endpoint}: {exc}")

    def _call(self, action: str, key: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, action, key) from exc

    # --- bucket ---
    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise self._error(exc, "head bucket") from exc
        except BotoCoreError as exc:
            raise self._error(exc, "head bucket") from exc
        try:
            self.client.create_bucket(Bucket=self.bucket)
            log.info("created bucket %s at %s", self.bucket, self.endpoint)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise self._error(exc, "create bucket") from exc

    # --- reads ---
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with prefix, in key order."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"], int(obj["Size"]), obj.get("ETag", "").strip('"'),
                                     obj.get("LastModified"))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list", prefix) from exc

    def list_dirs(self, prefix: str) -> list[str]:
        """The immediate 'folders' under prefix (common prefixes ending in '/')."""
        paginator = self.client.get_paginator("list_objects_v2")
        dirs: list[str] = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                dirs.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list", prefix) from exc
        return sorted(dirs)

    def get(self, key: str) -> bytes:
        """The object's bytes."""
        return self.get_with_etag(key)[0]

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and its ETag (for a later compare-and-swap)."""
        resp = self._call("get", key, self.client.get_object, Key=key)
        try:
            return resp["Body"].read(), resp["ETag"].strip('"')
        except (BotoCoreError, OSError) as exc:
            raise self._error(exc, "read", key) from exc

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        try:
            self._call("head", key, self.client.head_object, Key=key)
        except KeyNotFound:
            return False
        return True

    def download_file(self, key: str, path: Path) -> None:
        """Download an object to a local file (streamed; for large archives)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, key, str(path))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "download", key) from exc

    # --- writes ---
    def put(self, key: str, data: bytes, *, if_match: str | None = None,
            if_none_match: bool = False, content_type: str | None = None) -> str:
        """Write an object in one PUT; optionally conditional. Returns the new ETag."""
        kwargs: dict[str, Any] = {"Key": key, "Body": data}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if content_type:
            kwargs["ContentType"] = content_type
        resp = self._call("put", key, self.client.put_object, **kwargs)
        return resp.get("ETag", "").strip('"')

    def put_new(self, key: str, data: bytes, content_type: str | None = None) -> bool:
        """Write a key that must not exist yet; False (and no change) when it already does."""
        try:
            self.put(key, data, if_none_match=True, content_type=content_type)
        except PreconditionFailed:
            return False
        return True

    def copy(self, src_key: str, dst_key: str) -> None:
        """Server-side copy within the bucket."""
        self._call("copy", dst_key, self.client.copy_object, Key=dst_key,
                   CopySource={"Bucket": self.bucket, "Key": src_key})

    def upload_file(self, path: Path, key: str) -> None:
        """Upload a local file (multipart for large ones: visible only when complete)."""
        if path.stat().st_size < SMALL_FILE:
            self.put(key, path.read_bytes())
            return
        try:
            self.client.upload_file(str(path), self.bucket, key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "upload", key) from exc

    def delete(self, key: str) -> None:
        """Delete one object (used only for local clean-up, never on pipeline outputs)."""
        self._call("delete", key, self.client.delete_object, Key=key)

    # --- typed helpers ---
    def get_json(self, key: str) -> Any:
        """Read a JSON object."""
        raw = self.get(key)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StorageError(f"s3://{self.bucket}/{key} is not valid JSON: {exc}") from exc

    def put_json(self, key: str, value: Any, *, new: bool = False) -> bool:
        """Write a JSON object; with new=True only if the key does not exist yet."""
        data = json.dumps(value, indent=2, sort_keys=True, default=str).encode()
        if new:
            return self.put_new(key, data, content_type="application/json")
        self.put(key, data, content_type="application/json")
        return True

    def get_parquet(self, key: str) -> pd.DataFrame:
        """Read a Parquet table."""
        return pd.read_parquet(io.BytesIO(self.get(key)))

    def put_parquet(self, key: str, df: pd.DataFrame, *, new: bool = False) -> bool:
        """Write a Parquet table; with new=True only if the key does not exist yet."""
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        if new:
            return self.put_new(key, buf.getvalue())
        self.put(key, buf.getvalue())
        return True
