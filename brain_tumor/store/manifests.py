"""Completion manifests: the record that marks an uploaded folder (an export, a study) whole.

A folder of objects is written one object at a time, so a listing cannot tell a finished upload
from one still running or killed half-way. The uploader therefore writes ``_manifest.json``
(``MANIFEST_NAME``, schema ``folder_manifest``) into the folder last: the path, size, sha256 and
ETag of every other file in it. A folder is complete once its manifest exists, and it is taken
only while what is stored matches the manifest: no file missing, none extra, none changed.

* ``upload_folder`` sends a local folder's files and then the manifest; a second call after an
  interruption sends only the files that are missing or differ (size, or MD5 against the
  ETag), so an upload resumes instead of starting over.
* ``seal_folder`` writes the manifest of a folder another tool copied, from what is stored
  (``brain-tumor exports seal``, ``brain-tumor studies seal``).
* ``compare`` (pure) and ``differences`` check a folder against its manifest.
* ``folder_states`` (pure) tells from one listing which folders under a prefix are sealed and
  when their newest object arrived; ``overdue`` picks the unsealed ones old enough to report.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tqdm import tqdm

from brain_tumor.store.schemas import SchemaError, validate_record
from brain_tumor.store.storage import ObjectInfo, ObjectStore, StorageError

log = logging.getLogger(__name__)

#: the manifest's name inside the folder it describes (a reserved file name there)
MANIFEST_NAME = "_manifest.json"
#: how many file names a message lists before it says "..."
_SHOWN = 5
_FILE_FIELDS: dict[str, type] = {"path": str, "size": int, "sha256": str, "etag": str}


class ManifestError(ValueError):
    """A folder cannot be sealed or uploaded as asked, or its manifest cannot be read."""


@dataclass(frozen=True)
class LocalFile:
    """A local file to upload: its path inside the folder, and its size and digests."""

    path: str  # relative, '/'-separated
    source: Path
    size: int
    sha256: str
    md5: str


@dataclass(frozen=True)
class Differences:
    """How a stored folder differs from its manifest (paths relative to the folder)."""

    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra or self.changed)

    @property
    def files(self) -> list[str]:
        """Every path that differs, sorted."""
        return sorted({*self.missing, *self.extra, *self.changed})

    def describe(self) -> str:
        """'2 missing (a, b), 1 changed (c)': what differs, for messages."""
        parts = []
        for label, paths in (("missing", self.missing), ("extra", self.extra),
                             ("changed", self.changed)):
            if paths:
                shown = ", ".join(paths[:_SHOWN]) + (", ..." if len(paths) > _SHOWN else "")
                parts.append(f"{len(paths)} {label} ({shown})")
        return "; ".join(parts) or "no differences"


@dataclass(frozen=True)
class FolderState:
    """One folder as a listing shows it: how many objects, the newest one's time, sealed or not."""

    files: int
    newest: datetime | None
    sealed: bool


# --- pure ---
def is_manifest(relative: str) -> bool:
    """Whether a path relative to a folder is the folder's manifest."""
    return relative == MANIFEST_NAME


def build_record(kind: str, folder_id: str, files: Iterable[dict[str, Any]],
                 sealed_by: str) -> dict[str, Any]:
    """A ``folder_manifest`` record of the given file entries (path, size, sha256, etag)."""
    entries = sorted(({k: f[k] for k in _FILE_FIELDS} for f in files), key=lambda f: f["path"])
    record = {"kind": kind, "id": folder_id, "files": entries, "file_count": len(entries),
              "total_bytes": sum(f["size"] for f in entries), "sealed_by": sealed_by,
              "sealed_at": datetime.now(UTC).isoformat(timespec="seconds")}
    return validate_record("folder_manifest", record)


def check_record(record: Any) -> dict[str, Any]:
    """record if it is a valid ``folder_manifest`` (file entries included), else ManifestError."""
    try:
        record = validate_record("folder_manifest", record)
    except SchemaError as exc:
        raise ManifestError(str(exc)) from None
    for entry in record["files"]:
        if not isinstance(entry, dict) or any(
                not isinstance(entry.get(k), t) or isinstance(entry.get(k), bool)
                for k, t in _FILE_FIELDS.items()):
            raise ManifestError(f"folder_manifest.files: each entry needs path, size, sha256 and "
                                f"etag; received {entry!r:.120}")
    return record


def compare(record: dict[str, Any], listed: dict[str, ObjectInfo],
            read: Callable[[str], bytes] | None = None) -> Differences:
    """What differs between a manifest and a folder's listing (manifest itself left out).

    A file is changed when its size differs, or its ETag differs and (given ``read``) its
    sha256 does too; without ``read`` a different ETag alone counts as a change.
    """
    expected = {f["path"]: f for f in record["files"]}
    changed = []
    for path in sorted(expected.keys() & listed.keys()):
        want, have = expected[path], listed[path]
        if have.size != want["size"]:
            changed.append(path)
        elif have.etag != want["etag"] and (
                read is None or hashlib.sha256(read(path)).hexdigest() != want["sha256"]):
            changed.append(path)
    return Differences(missing=sorted(expected.keys() - listed.keys()),
                       extra=sorted(listed.keys() - expected.keys()), changed=changed)


def folder_states(objects: Iterable[ObjectInfo], root: str) -> dict[str, FolderState]:
    """Folder name -> state, for the folders directly under root (objects at root skipped)."""
    files: dict[str, int] = {}
    newest: dict[str, datetime | None] = {}
    sealed: set[str] = set()
    for obj in objects:
        rest = obj.key[len(root):]
        if "/" not in rest:
            continue
        name, relative = rest.split("/", 1)
        files[name] = files.get(name, 0) + 1
        when = newest.get(name)
        if obj.last_modified is not None and (when is None or obj.last_modified > when):
            when = obj.last_modified
        newest[name] = when
        if is_manifest(relative):
            sealed.add(name)
    return {n: FolderState(files[n], newest[n], n in sealed) for n in files}


def overdue(states: dict[str, FolderState], now: datetime, minutes: float) -> list[str]:
    """Unsealed folders whose newest object is at least ``minutes`` old, sorted."""
    limit = timedelta(minutes=minutes)
    return sorted(n for n, s in states.items()
                  if not s.sealed and s.newest is not None and now - s.newest >= limit)


def describe_incomplete(kind: str, name: str, state: FolderState, now: datetime) -> str:
    """'export e1: 321 file(s), no manifest, newest 95 minutes old' for logs and listings."""
    age = "unknown age" if state.newest is None else \
        f"newest {(now - state.newest).total_seconds() / 60:.0f} minutes old"
    return f"{kind} {name}: {state.files} file(s), no manifest, {age}"


# --- I/O ---
def hash_files(folder: Path, paths: list[Path], workers: int = 8) -> list[LocalFile]:
    """Size, sha256 and MD5 of local files (paths under folder), in the given order."""
    folder = Path(folder)

    def one(path: Path) -> LocalFile:
        sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        size = 0
        with path.open("rb") as fh:
            while chunk := fh.read(2**20):
                sha.update(chunk)
                md5.update(chunk)
                size += len(chunk)
        return LocalFile(path.relative_to(folder).as_posix(), path, size, sha.hexdigest(),
                         md5.hexdigest())

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, paths))


def listed(store: ObjectStore, prefix: str) -> tuple[dict[str, ObjectInfo], bool]:
    """(path -> object of every file under prefix but the manifest, whether a manifest exists)."""
    found: dict[str, ObjectInfo] = {}
    sealed = False
    for obj in store.list(prefix):
        relative = obj.key[len(prefix):]
        if is_manifest(relative):
            sealed = True
        else:
            found[relative] = obj
    return found, sealed


def read_manifest(store: ObjectStore, prefix: str) -> dict[str, Any] | None:
    """The folder's manifest, None if it has none; ManifestError if it cannot be read."""
    key = prefix + MANIFEST_NAME
    if not store.exists(key):
        return None
    try:
        return check_record(store.get_json(key))
    except (StorageError, ManifestError) as exc:
        raise ManifestError(f"manifest s3://{store.bucket}/{key} cannot be read: {exc}") from None


def differences(store: ObjectStore, prefix: str, record: dict[str, Any],
                files: dict[str, ObjectInfo] | None = None) -> Differences:
    """How the stored folder differs from its manifest (an ETag mismatch is settled by sha256)."""
    if files is None:
        files, _ = listed(store, prefix)
    return compare(record, files, read=lambda path: store.get(prefix + path))


def _write(store: ObjectStore, prefix: str, record: dict[str, Any]) -> str:
    key = prefix + MANIFEST_NAME
    store.put_json(key, record)
    log.info("sealed %s %s: %d file(s), %d bytes -> s3://%s/%s", record["kind"], record["id"],
             record["file_count"], record["total_bytes"], store.bucket, key)
    return key


def _same_files(record: dict[str, Any], entries: list[dict[str, Any]]) -> bool:
    def content(files: Iterable[dict[str, Any]]) -> set[tuple[str, int, str]]:
        return {(f["path"], f["size"], f["sha256"]) for f in files}

    return content(record["files"]) == content(entries)


def seal_folder(store: ObjectStore, prefix: str, kind: str, folder_id: str, workers: int = 8,
                replace: bool = False) -> tuple[dict[str, Any], bool]:
    """Write the manifest of what is stored under prefix; (manifest, whether it was written).

    A folder whose manifest matches it is left as it is. One that differs from its manifest is
    sealed again only with ``replace`` (else ManifestError naming the differences).
    """
    files, _ = listed(store, prefix)
    if not files:
        raise ManifestError(f"nothing to seal: no files under s3://{store.bucket}/{prefix}")
    try:
        old = read_manifest(store, prefix)
    except ManifestError as exc:
        log.warning("%s; sealing %s %s again", exc, kind, folder_id)
        old = None
    if old is not None:
        diff = differences(store, prefix, old, files)
        if not diff:
            return old, False
        if not replace:
            raise ManifestError(f"{kind} {folder_id!r} is sealed already and differs from its "
                                f"manifest: {diff.describe()}; a sealed {kind} is never "
                                "replaced, upload it under a new id")

    def entry(path: str) -> dict[str, Any]:
        data, etag = store.get_with_etag(prefix + path)
        return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "etag": etag}

    with ThreadPoolExecutor(workers) as pool:
        entries = list(pool.map(entry, sorted(files)))
    record = build_record(kind, folder_id, entries, "seal")
    _write(store, prefix, record)
    return record, True


def upload_folder(store: ObjectStore, prefix: str, kind: str, folder_id: str,
                  files: list[LocalFile], *, workers: int = 8, progress: bool = False,
                  replace: bool = False, content_type: str | None = None) -> dict[str, int]:
    """Upload local files under prefix, then their manifest; resumes an interrupted upload.

    Files already stored with the same size and MD5 (ETag) are not sent again. Refused
    (ManifestError) when the folder holds files that are not among ``files``, or, without
    ``replace``, when it is sealed already with other content. Returns the counts
    ``sent``, ``kept`` (already stored) and ``sealed`` (1 if a manifest was written).
    """
    stored, sealed = listed(store, prefix)
    try:
        old = read_manifest(store, prefix) if sealed else None
    except ManifestError as exc:
        log.warning("%s; it is written again after the upload", exc)
        old = None
    wanted = {f.path: f for f in files}
    if len(wanted) != len(files):
        raise ManifestError(f"{kind} {folder_id!r}: the same path appears twice in the upload")
    local_entries = [{"path": f.path, "size": f.size, "sha256": f.sha256, "etag": f.md5}
                     for f in files]
    if old is not None and not replace and not _same_files(old, local_entries):
        theirs = {f["path"]: f for f in old["files"]}
        diff = Differences(missing=sorted(theirs.keys() - wanted.keys()),
                           extra=sorted(wanted.keys() - theirs.keys()),
                           changed=sorted(p for p in theirs.keys() & wanted.keys()
                                          if (theirs[p]["size"], theirs[p]["sha256"])
                                          != (wanted[p].size, wanted[p].sha256)))
        raise ManifestError(f"{kind} {folder_id!r} exists already, complete, with other "
                            f"content (the local folder has {diff.describe()} against it); "
                            f"a complete {kind} is never replaced, upload under a new id")
    extra = sorted(stored.keys() - wanted.keys())
    if extra:
        raise ManifestError(
            f"s3://{store.bucket}/{prefix} holds {len(extra)} file(s) that are not in the local "
            f"folder ({', '.join(extra[:_SHOWN])}{', ...' if len(extra) > _SHOWN else ''}): "
            f"remove them from storage or upload under a new id")
    todo = [f for f in files if not (f.path in stored and stored[f.path].size == f.size
                                     and stored[f.path].etag.lower() == f.md5)]

    def send(f: LocalFile) -> None:
        if content_type:
            store.put(prefix + f.path, f.source.read_bytes(), content_type=content_type)
        else:
            store.upload_file(f.source, prefix + f.path)

    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(send, todo), total=len(todo), disable=not progress,
                      desc=f"upload {folder_id}", unit="file"):
            pass
    now_stored, _ = listed(store, prefix)
    record = build_record(kind, folder_id, [
        {**e, "etag": now_stored[e["path"]].etag if e["path"] in now_stored else e["etag"]}
        for e in local_entries], "upload" if kind == "export" else "submit")
    diff = compare(record, now_stored)
    if diff:
        raise ManifestError(f"{kind} {folder_id!r} changed in storage during the upload: "
                            f"{diff.describe()}; not sealed, upload again")
    counts = {"sent": len(todo), "kept": len(files) - len(todo), "sealed": 0}
    if old is None or todo or compare(old, now_stored):
        _write(store, prefix, record)
        counts["sealed"] = 1
    log.info("%s %s: %d file(s) sent, %d already stored%s", kind, folder_id, counts["sent"],
             counts["kept"], ", manifest written" if counts["sealed"] else ", complete already")
    return counts
