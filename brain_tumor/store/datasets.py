"""Dataset versions, the HEAD pointer and the ingest ledger in S3.

A version ``datasets/<version>/`` is written once: manifest, quarantine and changes first,
``dataset.json`` last (a version without it does not exist). ``datasets/HEAD.json`` points at the
newest version and moves only by compare-and-swap. ``ledger/exports/<export_id>.json`` records
what became of each export (ingested into a version, a duplicate of one, or rejected with a
reason), so new exports can be found.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import pandas as pd

from brain_tumor.settings import Settings
from brain_tumor.store.schemas import validate_record, validate_table
from brain_tumor.store.storage import KeyNotFound, ObjectStore, StorageError

log = logging.getLogger(__name__)

#: ledger statuses: taken into the version named; nothing new (the version named holds it all
#: already, without listing it); not taken in (``reason`` says why)
INGESTED, DUPLICATE, REJECTED = "ingested", "duplicate", "rejected"
LEDGER_STATUSES = (INGESTED, DUPLICATE, REJECTED)


class DatasetNotFound(StorageError):
    """No such dataset version (or no version at all yet)."""


def utc_now() -> str:
    """The current time, ISO 8601 in UTC."""
    return datetime.now(UTC).isoformat(timespec="seconds")


#: the sources, relative to the package folder, whose content decides what a trained model is
CODE_SOURCES = ("ml", "ingest/imaging.py", "evaluation/metrics.py", "evaluation/tuning.py",
                "scoring/postprocess.py", "scoring/ood.py")


@functools.cache
def code_version(root: Path | None = None, sources: tuple[str, ...] = CODE_SOURCES) -> str:
    """This package's version and a hash of the sources that decide what a trained model is.

    ``<package version>+<12 hex>``. The hash covers, by path relative to ``root`` (default: this
    package's folder) and content, in path order, every ``.py`` file of ``sources``: everything
    under ``brain_tumor/ml/`` (inputs, models, training, prediction),
    ``brain_tumor/ingest/imaging.py`` (how slices are decoded and resized),
    ``brain_tumor/evaluation/metrics.py`` (the threshold rule), ``brain_tumor/evaluation/tuning.py``
    and ``brain_tumor/scoring/postprocess.py`` (the post-processing tuned at training),
    ``brain_tumor/scoring/ood.py`` (the statistics the out-of-distribution reference is fitted
    on). Read once per process.
    """
    try:
        package = package_version("brain-tumor")
    except PackageNotFoundError:
        package = "unknown"
    root = root or Path(__file__).resolve().parents[1]
    files: set[Path] = set()
    for source in sources:
        path = root / source
        if not path.exists():
            raise FileNotFoundError(f"code version source {source!r} not found under {root}")
        files |= {path} if path.is_file() else set(path.rglob("*.py"))
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        if "__pycache__" in path.parts:
            continue
        content = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"{path.relative_to(root).as_posix()} {content}\n".encode())
    return f"{package}+{digest.hexdigest()[:12]}"


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
        """Write a version's objects, dataset.json last; False if it existed already (or another
        writer committed it first: its dataset.json is kept)."""
        if self.exists(version):
            return False
        self.store.put_parquet(self.key(version, "manifest.parquet"),
                               validate_table("manifest", manifest))
        self.store.put_parquet(self.key(version, "quarantine.parquet"),
                               validate_table("quarantine", quarantine))
        self.store.put_parquet(self.key(version, "changes.parquet"),
                               validate_table("changes", changes))
        return self.store.put_json(self.key(version, "dataset.json"),
                                   validate_record("dataset", record), new=True)

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
    def ledger_key(self, export_id: str) -> str:
        """Key of an export's ledger entry."""
        return self.settings.key("ledger", "exports", f"{export_id}.json")

    def entries(self) -> dict[str, dict]:
        """Every ledger entry (ingested, duplicate and rejected), by export id."""
        prefix = self.settings.key("ledger", "exports") + "/"
        entries = {}
        for info in self.store.list(prefix):
            entry = _read_entry(self.store.get_json(info.key))
            entries[entry["export_id"]] = entry
        return entries

    def ledger(self) -> dict[str, dict]:
        """Every taken-in export's ledger entry (ingested or duplicate), by export id."""
        return {k: e for k, e in self.entries().items() if e["status"] != REJECTED}

    def rejected(self) -> dict[str, dict]:
        """Every rejected export's ledger entry, by export id."""
        return {k: e for k, e in self.entries().items() if e["status"] == REJECTED}

    def entry(self, export_id: str) -> dict | None:
        """One export's ledger entry, or None when the pipeline has not decided on it."""
        try:
            return _read_entry(self.store.get_json(self.ledger_key(export_id)))
        except KeyNotFound:
            return None

    def write_ledger(self, entry: dict) -> bool:
        """Record an export's outcome once; a rejected entry is the only one ever replaced.

        False (and no change) when the export has an ingested or duplicate entry already.
        """
        entry = _read_entry({"reason": None, **entry})
        key = self.ledger_key(entry["export_id"])
        if self.store.put_json(key, entry, new=True):
            return True
        raw, etag = self.store.get_with_etag(key)
        if _read_entry(json.loads(raw))["status"] != REJECTED:
            return False
        body = json.dumps(entry, indent=2, sort_keys=True).encode()
        self.store.put(key, body, if_match=etag, content_type="application/json")
        log.info("ledger: export %s was rejected, now %s", entry["export_id"], entry["status"])
        return True

    def clear_rejection(self, export_id: str) -> dict:
        """Remove a rejected export's entry so the next ingest takes it up again; returns it."""
        entry = self.entry(export_id)
        if entry is None or entry["status"] != REJECTED:
            state = "not in the ledger" if entry is None else entry["status"]
            raise ValueError(f"export {export_id!r} is not rejected (it is {state}): only a "
                             "rejected export can be retried")
        self.store.delete(self.ledger_key(export_id))
        log.info("ledger: rejection of export %s cleared (was: %s)", export_id, entry["reason"])
        return entry


def _read_entry(raw: Any) -> dict:
    """A ledger entry validated; entries written before ``status`` existed read as ingested."""
    if isinstance(raw, dict):
        raw.setdefault("status", INGESTED)
        raw.setdefault("reason", None)
    entry = validate_record("ledger_entry", raw)
    if entry["status"] not in LEDGER_STATUSES:
        raise StorageError(f"ledger entry of {entry['export_id']!r}: status must be one of "
                           f"{LEDGER_STATUSES}, received {entry['status']!r:.60}")
    if (entry["dataset_version"] is None) != (entry["status"] == REJECTED):
        raise StorageError(f"ledger entry of {entry['export_id']!r}: a {entry['status']} entry "
                           f"{'needs' if entry['status'] != REJECTED else 'has no'} "
                           f"dataset_version, received {entry['dataset_version']!r}")
    return entry
