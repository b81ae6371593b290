"""Dataset versions, the HEAD pointer and the ingest ledger in S3.

A version ``datasets/<version>/`` is written once: manifest, quarantine and changes first,
``dataset.json`` last (a version without it does not exist). ``datasets/HEAD.json`` points at the
newest version and moves only by compare-and-swap. ``ledger/exports/<export_id>.json`` records
which version took in each export, so new exports can be found.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import pandas as pd

from brain_tumor.settings import Settings
from brain_tumor.store.schemas import validate_record, validate_table
from brain_tumor.store.storage import KeyNotFound, ObjectStore, StorageError

log = logging.getLogger(__name__)


class DatasetNotFound(StorageError):
    """No such dataset version (or no version at all yet)."""


def utc_now() -> str:
    """The current time, ISO 8601 in UTC."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def code_version() -> str:
    """This package's version."""
    try:
        return package_version("brain-tumor")
    except PackageNotFoundError:
        return "unknown"


def version_id(manifest: pd.DataFrame, quarantine: pd.DataFrame) -> str:
    """Content-derived version id: the same slices and rejects give the same id."""
    h = hashlib.sha256()
    rows = manifest.sort_values(["patient_id", "slice_index"])
    for r in rows[["patient_id", "slice_index", "image_sha256", "mask_sha256"]].itertuples(False):
        h.update(f"m|{r[0]}|{r[1]}|{r[2]}|{r[3]}\n".encode())
    for r in quarantine.sort_values(["export_id", "path"])[["export_id", "path", "reason"]]\
            .itertuples(False):
        h.update(f"q|{r[0]}|{r[1]}|{r[2]}\n".encode())
    return "ds-" + h.hexdigest()[:12]


@dataclass(frozen=True)
class Head:
    """The HEAD pointer as read, with its ETag for a compare-and-swap."""

    version: str | None
    etag: str | None


class DatasetStore:
    """Reads and writes dataset versions, HEAD and the ledger."""

    def __init__(self, store: ObjectStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def key(self, version: str, name: str) -> str:
        """Key of one object of a version."""
        return self.settings.key("datasets", version, name)

    # --- HEAD ---
    def head(self) -> Head:
        """The newest version (None before the first ingest)."""
        try:
            raw, etag = self.store.get_with_etag(self.settings.key("datasets", "HEAD.json"))
        except KeyNotFound:
            return Head(None, None)
        record = validate_record("dataset_head", json.loads(raw))
        return Head(record["version"], etag)

    def move_head(self, version: str, expected: Head) -> None:
        """Point HEAD at version if it still is what was read (PreconditionFailed otherwise)."""
        body = json.dumps(validate_record("dataset_head", {"version": version,
                                                           "updated_at": utc_now()})).encode()
        key = self.settings.key("datasets", "HEAD.json")
        if expected.etag is None:
            self.store.put(key, body, if_none_match=True, content_type="application/json")
        else:
            self.store.put(key, body, if_match=expected.etag, content_type="application/json")
        log.info("dataset HEAD -> %s (was %s)", version, expected.version)

    def resolve(self, version: str | None) -> str:
        """The given version, or HEAD's when None; DatasetNotFound when there is none."""
        if version is None:
            version = self.head().version
            if version is None:
                raise DatasetNotFound("no dataset version yet: ingest an export first")
        if not self.exists(version):
            raise DatasetNotFound(f"dataset version {version!r} does not exist "
                                  f"(no {self.key(version, 'dataset.json')})")
        return version

    # --- versions ---
    def exists(self, version: str) -> bool:
        """Whether the version was committed (its dataset.json exists)."""
        return self.store.exists(self.key(version, "dataset.json"))

    def record(self, version: str) -> dict:
        """The version's dataset.json."""
        return validate_record("dataset", self.store.get_json(self.key(version, "dataset.json")))

    def manifest(self, version: str) -> pd.DataFrame:
        """The version's manifest."""
        return validate_table("manifest",
                              self.store.get_parquet(self.key(version, "manifest.parquet")))

    def quarantine(self, version: str) -> pd.DataFrame:
        """The version's quarantine table."""
        return validate_table("quarantine",
                              self.store.get_parquet(self.key(version, "quarantine.parquet")))

    def changes(self, version: str) -> pd.DataFrame:
        """Slices this version superseded in its parent."""
        return validate_table("changes",
                              self.store.get_parquet(self.key(version, "changes.parquet")))

    def split(self, version: str) -> pd.DataFrame:
        """The version's split (DatasetNotFound if not split yet)."""
        key = self.key(version, "split.parquet")
        try:
            return validate_table("split", self.store.get_parquet(key))
        except KeyNotFound as exc:
            raise DatasetNotFound(f"dataset version {version} has no split yet ({key}); "
                                  "run `brain-tumor split`") from exc

    def commit(self, version: str, manifest: pd.DataFrame, quarantine: pd.DataFrame,
               changes: pd.DataFrame, record: dict) -> bool:
        """Write a version's objects, dataset.json last; False if it existed already."""
        if self.exists(version):
            return False
        self.store.put_parquet(self.key(version, "manifest.parquet"),
                               validate_table("manifest", manifest))
        self.store.put_parquet(self.key(version, "quarantine.parquet"),
                               validate_table("quarantine", quarantine))
        self.store.put_parquet(self.key(version, "changes.parquet"),
                               validate_table("changes", changes))
        self.store.put_json(self.key(version, "dataset.json"), validate_record("dataset", record),
                            new=True)
        return True

    def write_split(self, version: str, split: pd.DataFrame) -> bool:
        """Write the version's split once; False if an identical one exists, error if different."""
        key = self.key(version, "split.parquet")
        split = validate_table("split", split).reset_index(drop=True)
        if self.store.put_parquet(key, split, new=True):
            return True
        existing = self.split(version).reset_index(drop=True)
        if not existing[["patient_id", "split"]].equals(split[["patient_id", "split"]]):
            raise StorageError(f"{key} exists with a different assignment; a version's split is "
                               "written once (a new export makes a new version to split)")
        return False

    def previous_split(self, version: str) -> pd.DataFrame | None:
        """The split of the nearest ancestor that has one (for a stable split), or None."""
        parent = self.record(version).get("parent")
        while parent:
            try:
                return self.split(parent)
            except DatasetNotFound:
                parent = self.record(parent).get("parent")
        return None

    # --- ledger ---
    def ledger(self) -> dict[str, dict]:
        """Every ingested export's ledger entry, by export id."""
        prefix = self.settings.key("ledger", "exports") + "/"
        entries = {}
        for info in self.store.list(prefix):
            entry = validate_record("ledger_entry", self.store.get_json(info.key))
            entries[entry["export_id"]] = entry
        return entries

    def write_ledger(self, entry: dict) -> bool:
        """Record an ingested export (once)."""
        key = self.settings.key("ledger", "exports", f"{entry['export_id']}.json")
        return self.store.put_json(key, validate_record("ledger_entry", entry), new=True)
