"""TCIA exports in object storage: upload, list, and open one for reading.

An export is either a prefix ``exports/<export_id>/`` holding patient folders, or one archive
object ``exports/<export_id>.zip|.tar|.tar.gz|.tgz|.tar.xz`` of such folders.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from brain_tumor.settings import Settings
from brain_tumor.store import ids
from brain_tumor.store.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tar.xz", ".tgz", ".tar", ".zip")


class ExportError(ValueError):
    """An export is missing, empty, or cannot be read as an export."""


@dataclass
class ExportFiles:
    """The files of one export, each readable by a loader, plus a content fingerprint."""

    export_id: str
    source: str  # where it was read from, for messages
    loaders: dict[str, Callable[[], bytes]]  # relative path -> bytes
    fingerprint: str


def check_export_id(export_id: str) -> str:
    """Validate an export id (the key-id rule of ``brain_tumor.store.ids``); ExportError if not."""
    try:
        return ids.check_export_id(export_id)
    except ids.InvalidId as exc:
        raise ExportError(str(exc)) from None


def split_archive_name(name: str) -> tuple[str, str] | None:
    """('id', '.tar.gz') for an archive file name, None for anything else."""
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return None


def list_exports(store: ObjectStore, settings: Settings) -> list[str]:
    """Every export id in storage (folders and archives), sorted."""
    prefix = settings.key("exports")
    found = {d[len(prefix):].rstrip("/") for d in store.list_dirs(prefix)}
    for info in store.list(prefix):
        rest = info.key[len(prefix):]
        if "/" not in rest and (parsed := split_archive_name(rest)):
            found.add(parsed[0])
    return sorted(i for i in found if ids.is_key_id(i))


def _archive_key(store: ObjectStore, settings: Settings, export_id: str) -> str | None:
    for suffix in ARCHIVE_SUFFIXES:
        key = settings.key("exports", export_id + suffix)
        if store.exists(key):
            return key
    return None


def upload_export(store: ObjectStore, settings: Settings, path: Path,
                  export_id: str | None = None, progress: bool = False) -> str:
    """Upload a local export folder or archive; refuses to replace an existing export."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"no such file or folder: {path}")
    parsed = split_archive_name(path.name) if path.is_file() else None
    if path.is_file() and parsed is None:
        raise ExportError(f"{path} is neither a folder nor an archive "
                          f"({', '.join(ARCHIVE_SUFFIXES)})")
    export_id = check_export_id(export_id or (parsed[0] if parsed else path.name))
    if export_id in list_exports(store, settings):
        raise ExportError(f"export {export_id!r} exists already; exports are never replaced, "
                          "upload under a new id")
    if parsed:
        store.upload_file(path, settings.key("exports", export_id + parsed[1]))
        log.info("uploaded archive %s as export %s", path, export_id)
        return export_id
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise ExportError(f"folder {path} is empty: nothing to upload")

    def send(p: Path) -> None:
        store.upload_file(p, settings.key("exports", export_id, p.relative_to(path).as_posix()))

    with ThreadPoolExecutor(settings.io_workers) as pool:
        for _ in tqdm(pool.map(send, files), total=len(files), disable=not progress,
                      desc=f"upload {export_id}", unit="file"):
            pass
    log.info("uploaded %d files from %s as export %s", len(files), path, export_id)
    return export_id


def _fingerprint(items: list[tuple[str, int, str]]) -> str:
    h = hashlib.sha256()
    for name, size, etag in sorted(items):
        h.update(f"{name}|{size}|{etag}\n".encode())
    return h.hexdigest()


def _safe_member(name: str) -> bool:
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts


def _extract(archive: Path, dest: Path) -> list[str]:
    """Extract an archive's regular files under dest; return their relative paths."""
    names: list[str] = []
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and _safe_member(info.filename):
                        zf.extract(info, dest)
                        names.append(info.filename)
        else:
            # one pass over the (possibly xz-compressed) stream: getmembers() + extractall()
            # would decompress it twice
            with tarfile.open(archive, mode="r|*") as tf:
                for member in tf:
                    if member.isfile() and _safe_member(member.name):
                        tf.extract(member, dest, filter="data")
                        names.append(member.name)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ExportError(f"archive {archive.name} cannot be read: {exc}") from exc
    return names


def _file_loader(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def _key_loader(store: ObjectStore, key: str) -> Callable[[], bytes]:
    return lambda: store.get(key)


def export_fingerprint(store: ObjectStore, settings: Settings, export_id: str) -> str | None:
    """The export's fingerprint from listing alone (names, sizes, ETags); None if it is missing."""
    prefix = settings.key("exports", export_id) + "/"
    objects = [(o.key[len(prefix):], o.size, o.etag) for o in store.list(prefix)]
    if objects:
        return _fingerprint(objects)
    key = _archive_key(store, settings, export_id)
    if key is None:
        return None
    info = next(o for o in store.list(key) if o.key == key)
    return _fingerprint([(PurePosixPath(key).name, info.size, info.etag)])


def open_export(store: ObjectStore, settings: Settings, export_id: str,
                workdir: Path) -> ExportFiles:
    """List an export's files (extracting an archive into workdir); ExportError if missing/empty."""
    check_export_id(export_id)
    prefix = settings.key("exports", export_id) + "/"
    objects = list(store.list(prefix))
    if objects:
        loaders = {o.key[len(prefix):]: _key_loader(store, o.key) for o in objects}
        fingerprint = _fingerprint([(o.key[len(prefix):], o.size, o.etag) for o in objects])
        return ExportFiles(export_id, f"s3://{store.bucket}/{prefix}", loaders, fingerprint)
    key = _archive_key(store, settings, export_id)
    if key is None:
        raise ExportError(f"export {export_id!r} not found: no objects under "
                          f"s3://{store.bucket}/{prefix} and no archive {export_id}"
                          f"{{{','.join(ARCHIVE_SUFFIXES)}}}")
    local = workdir / PurePosixPath(key).name
    try:
        store.download_file(key, local)
    except StorageError as exc:
        raise ExportError(f"archive s3://{store.bucket}/{key} cannot be downloaded: {exc}") from exc
    info = next(o for o in store.list(key) if o.key == key)
    digest = _fingerprint([(PurePosixPath(key).name, info.size, info.etag)])
    root = workdir / "extracted"
    names = _extract(local, root)
    if not names:
        raise ExportError(f"archive s3://{store.bucket}/{key} holds no files")
    loaders = {n: _file_loader(root / n) for n in names}
    return ExportFiles(export_id, f"s3://{store.bucket}/{key}", loaders, digest)
