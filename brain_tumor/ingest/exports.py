"""TCIA exports in object storage: upload, list, and open one for reading.

An export is either a prefix ``exports/<export_id>/`` holding patient folders, or one archive
object ``exports/<export_id>.zip|.tar|.tar.gz|.tgz|.tar.xz`` of such folders.

An archive is one object, complete once it is visible. A folder is complete once it holds its
manifest (``exports/<export_id>/_manifest.json``, ``brain_tumor.store.manifests``), which
``upload_export`` writes last and ``seal_export`` writes for a folder copied by another tool;
``list_exports`` lists complete exports only and ``open_export`` refuses a folder that has no
manifest or differs from it (``IncompleteExport``).
"""

from __future__ import annotations

import hashlib
import logging
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from brain_tumor.settings import Settings
from brain_tumor.store import ids, manifests
from brain_tumor.store.storage import ObjectInfo, ObjectStore, StorageError

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tar.xz", ".tgz", ".tar", ".zip")
#: what every archive member adds to the bytes an archive expands to besides its size (a tar
#: header), so that an archive of countless empty members is bounded too
MEMBER_OVERHEAD_BYTES = 512
_COPY_CHUNK = 1 << 20


class ExportError(ValueError):
    """An export is missing, empty, or cannot be read as an export."""


class IncompleteExport(ExportError):
    """An export folder without its manifest, or one that differs from it: not taken (yet)."""


class BadExport(ExportError):
    """An export whose content cannot be taken in (empty, unreadable archive): ingest records it
    as rejected, where a missing export or a failed download is only an error."""


class ArchiveTooLarge(BadExport):
    """An archive that expands past its budget (``reason``: ``archive_bomb`` past
    ``max_archive_ratio``, ``too_large`` past ``max_extracted_bytes``): extraction stopped."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ExportFiles:
    """The files of one export, each readable by a loader, plus a content fingerprint."""

    export_id: str
    source: str  # where it was read from, for messages
    loaders: dict[str, Callable[[], bytes]]  # relative path -> bytes
    fingerprint: str
    #: archive members left out, each (path, reason, detail): links, unsafe paths, bad names
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    #: relative path -> size in bytes, where known before reading (read before loading)
    sizes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ArchiveLimits:
    """How far an archive may expand: each member, all members together, and as a multiple of
    the archive's own size (once past one member's worth)."""

    file_bytes: int
    extracted_bytes: int
    ratio: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        """The limits the settings give (max_file_bytes, max_extracted_bytes, max_archive_ratio)."""
        return cls(settings.max_file_bytes, settings.max_extracted_bytes,
                   settings.max_archive_ratio)

    def budget(self, archive_bytes: int) -> tuple[int, str]:
        """(the most bytes an archive of archive_bytes may expand to, the reason past it)."""
        by_ratio = max(int(self.ratio * archive_bytes), self.file_bytes)
        if by_ratio < self.extracted_bytes:
            return by_ratio, "archive_bomb"
        return self.extracted_bytes, "too_large"


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


def export_states(store: ObjectStore, settings: Settings) -> dict[str, manifests.FolderState]:
    """Export id -> state (one listing): an archive is sealed by nature, a folder once it
    holds its manifest; a folder wins over an archive of the same id, as in open_export."""
    prefix = settings.key("exports")
    objects = list(store.list(prefix))
    states = manifests.folder_states(objects, prefix)
    for info in objects:
        rest = info.key[len(prefix):]
        if "/" not in rest and (parsed := split_archive_name(rest)):
            states.setdefault(parsed[0], manifests.FolderState(1, info.last_modified, True))
    return {i: s for i, s in states.items() if ids.is_key_id(i)}


def list_exports(store: ObjectStore, settings: Settings) -> list[str]:
    """Every complete export id in storage (archives, folders holding their manifest), sorted."""
    return sorted(i for i, s in export_states(store, settings).items() if s.sealed)


def incomplete_exports(store: ObjectStore,
                       settings: Settings) -> dict[str, manifests.FolderState]:
    """Export folders without a manifest (an upload running or interrupted, a copy not sealed)."""
    return {i: s for i, s in export_states(store, settings).items() if not s.sealed}


def seal_export(store: ObjectStore, settings: Settings, export_id: str) -> tuple[dict, bool]:
    """Write the manifest of an export folder copied by another tool, from what is stored.

    Returns (manifest, whether it was written); a folder that matches its manifest already is
    left as it is, one that differs from it is refused (exports are never replaced).
    """
    prefix = settings.key("exports", check_export_id(export_id)) + "/"
    try:
        return manifests.seal_folder(store, prefix, "export", export_id, settings.io_workers)
    except manifests.ManifestError as exc:
        raise ExportError(str(exc)) from None


def _archive_key(store: ObjectStore, settings: Settings, export_id: str) -> str | None:
    for suffix in ARCHIVE_SUFFIXES:
        key = settings.key("exports", export_id + suffix)
        if store.exists(key):
            return key
    return None


def upload_export(store: ObjectStore, settings: Settings, path: Path,
                  export_id: str | None = None, progress: bool = False) -> str:
    """Upload a local export folder or archive; refuses to replace an existing export.

    A folder's manifest is written last. A folder upload that was interrupted is resumed:
    only the files missing or different in storage are sent, then the manifest. Uploading
    the same folder again once it is complete changes nothing.
    """
    path = Path(path)
    if not path.exists():
        raise ExportError(f"no such file or folder: {path}")
    parsed = split_archive_name(path.name) if path.is_file() else None
    if path.is_file() and parsed is None:
        raise ExportError(f"{path} is neither a folder nor an archive "
                          f"({', '.join(ARCHIVE_SUFFIXES)})")
    export_id = check_export_id(export_id or (parsed[0] if parsed else path.name))
    state = export_states(store, settings).get(export_id)
    exists = ExportError(f"export {export_id!r} exists already; exports are never replaced, "
                         "upload under a new id")
    if parsed:
        if state is not None:
            raise exists
        store.upload_file(path, settings.key("exports", export_id + parsed[1]))
        log.info("uploaded archive %s as export %s", path, export_id)
        return export_id
    if state is not None and _archive_key(store, settings, export_id):
        raise exists
    files = _uploadable_files(path)
    if not files:
        raise ExportError(f"folder {path} is empty: nothing to upload")
    if state is not None and not state.sealed:
        log.info("export %s is incomplete in storage (%d file(s)): resuming the upload",
                 export_id, state.files)
    local = manifests.hash_files(path, files, settings.io_workers)
    try:
        counts = manifests.upload_folder(store, settings.key("exports", export_id) + "/",
                                         "export", export_id, local,
                                         workers=settings.io_workers, progress=progress)
    except manifests.ManifestError as exc:
        raise ExportError(str(exc)) from None
    log.info("export %s from %s: %d file(s) sent, %d already stored", export_id, path,
             counts["sent"], counts["kept"])
    return export_id


def printable_name(name: str) -> str:
    """A file name as valid UTF-8 text: bytes that are not UTF-8 shown as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8_name(name: str) -> bool:
    """Whether a name read from a file system or an archive was valid UTF-8 (no surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _uploadable_files(folder: Path) -> list[Path]:
    """The files under folder, sorted; names that are not UTF-8 are left out with a warning
    (they cannot be S3 keys)."""
    files, skipped = [], []
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        if is_utf8_name(rel):
            files.append(p)
        else:
            skipped.append(printable_name(rel))
            log.warning("not uploaded: %s (bad_name: the name is not valid UTF-8)", skipped[-1])
    if skipped:
        log.warning("%d file(s) of %s not uploaded because their names are not valid UTF-8: %s",
                    len(skipped), printable_name(str(folder)), ", ".join(sorted(skipped)[:10]))
    return sorted(files)


def _fingerprint(items: list[tuple[str, int, str]]) -> str:
    h = hashlib.sha256()
    for name, size, etag in sorted(items):
        h.update(f"{name}|{size}|{etag}\n".encode())
    return h.hexdigest()


def member_problem(name: str, regular: bool, kind: str = "") -> tuple[str, str] | None:
    """(reason, detail) when an archive member must not be extracted, else None.

    Only regular files with a relative, UTF-8 path that stays inside the export are read.
    """
    if not is_utf8_name(name):
        return "bad_name", "the name is not valid UTF-8"
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        return "unsafe_path", "the path leaves the export (absolute or through '..')"
    if not regular:
        return "not_a_file", f"a {kind or 'special member'}, not a regular file"
    return None


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link to {printable_name(member.linkname)!r:.200}"
    if member.islnk():
        return f"hard link to {printable_name(member.linkname)!r:.200}"
    return "device, FIFO or other special member"


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


class _Budget:
    """Counts the bytes an archive expands to; ArchiveTooLarge once past its budget."""

    def __init__(self, archive: Path, limits: ArchiveLimits) -> None:
        self.archive = archive
        self.size = archive.stat().st_size
        self.limit, self.reason = limits.budget(self.size)
        self.ratio = limits.ratio
        self.used = 0
        self.members = 0

    def add(self, name: str, size: int) -> None:
        """Count one member of size bytes (plus MEMBER_OVERHEAD_BYTES)."""
        self.used += max(size, 0) + MEMBER_OVERHEAD_BYTES
        self.members += 1
        if self.used <= self.limit:
            return
        what = (f"an archive bomb (archive_bomb): its members expand to more than {self.ratio:g} "
                f"times its {self.size:,} bytes ({self.limit:,} bytes, max_archive_ratio)"
                if self.reason == "archive_bomb" else
                f"too large (too_large): its members expand to more than {self.limit:,} bytes "
                f"(max_extracted_bytes)")
        raise ArchiveTooLarge(f"archive {self.archive.name} is {what}; extraction stopped at "
                              f"member {self.members} ({printable_name(name)!r:.200}); nothing "
                              f"of it is taken", self.reason)


def _copy_at_most(src: IO[bytes], target: Path, limit: int) -> int | None:
    """Copy src into target, at most limit bytes: the bytes written, or None (target removed)
    when src holds more."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with target.open("wb") as out:
        while chunk := src.read(_COPY_CHUNK):
            written += len(chunk)
            if written > limit:
                break
            out.write(chunk)
    if written > limit:
        target.unlink()
        return None
    return written


def _too_large(size: int | None, limit: int) -> tuple[str, str]:
    what = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
    return "too_large", f"{what}, over the limit of {limit:,} bytes (max_file_bytes); not extracted"


def _extract(archive: Path, dest: Path, limits: ArchiveLimits
             ) -> tuple[dict[str, int], list[tuple[str, str, str]]]:
    """Extract an archive's regular files under dest: {relative path: size}, and every other
    member (links, unsafe paths, names that are not UTF-8, files over limits.file_bytes) as
    (path, reason, detail). ArchiveTooLarge, with nothing more written, once the members add
    up to more than the archive's budget (``ArchiveLimits.budget``)."""
    names: dict[str, int] = {}
    skipped: list[tuple[str, str, str]] = []
    budget = _Budget(archive, limits)

    def skip(name: str, problem: tuple[str, str]) -> None:
        skipped.append((printable_name(name), *problem))
        log.warning("archive %s: %s left out: %s (%s)", archive.name, printable_name(name),
                    *problem)

    def write(name: str, size: int, src: Callable[[], IO[bytes]], target: Path) -> None:
        if size > limits.file_bytes:
            skip(name, _too_large(size, limits.file_bytes))
            return
        with src() as stream:
            written = _copy_at_most(stream, target, limits.file_bytes)
        if written is None:
            skip(name, _too_large(None, limits.file_bytes))
        else:
            names[name] = written

    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    budget.add(info.filename, info.file_size)
                    link = _zip_is_link(info)
                    problem = member_problem(info.filename, not link, "symbolic link")
                    if problem:
                        skip(info.filename, problem)
                        continue
                    write(info.filename, info.file_size, lambda i=info: zf.open(i),
                          dest / info.filename)
        else:
            # one pass over the (possibly xz-compressed) stream: getmembers() + extractall()
            # would decompress it twice
            with tarfile.open(archive, mode="r|*") as tf:
                for member in tf:
                    if member.isdir():
                        continue
                    budget.add(member.name, member.size)
                    problem = member_problem(member.name, member.isfile(), _tar_kind(member))
                    if problem:
                        skip(member.name, problem)
                        continue
                    try:
                        safe = tarfile.data_filter(member, str(dest))
                    except tarfile.FilterError as exc:
                        skip(member.name, ("unsafe_path", f"refused on extraction: {exc}"))
                        continue
                    write(member.name, member.size,
                          lambda m=member: tf.extractfile(m),  # type: ignore[return-value]
                          dest / safe.name)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError) as exc:
        raise BadExport(f"archive {archive.name} cannot be read: {exc}") from exc
    return names, skipped


def _file_loader(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def _key_loader(store: ObjectStore, key: str) -> Callable[[], bytes]:
    return lambda: store.get(key)


def export_fingerprint(store: ObjectStore, settings: Settings, export_id: str) -> str | None:
    """The export's fingerprint from listing alone (names, sizes, ETags); None if it is missing."""
    prefix = settings.key("exports", export_id) + "/"
    objects = [(o.key[len(prefix):], o.size, o.etag) for o in store.list(prefix)
               if not manifests.is_manifest(o.key[len(prefix):])]
    if objects:
        return _fingerprint(objects)
    key = _archive_key(store, settings, export_id)
    if key is None:
        return None
    info = next(o for o in store.list(key) if o.key == key)
    return _fingerprint([(PurePosixPath(key).name, info.size, info.etag)])


def _check_complete(store: ObjectStore, export_id: str, prefix: str,
                    objects: dict[str, ObjectInfo], sealed: bool) -> None:
    """IncompleteExport unless the folder holds its manifest and matches it."""
    where = f"s3://{store.bucket}/{prefix}"
    if not sealed:
        raise IncompleteExport(
            f"export {export_id!r} is incomplete: {len(objects)} file(s) under {where} and no "
            f"{manifests.MANIFEST_NAME} (an upload still running or interrupted: `brain-tumor "
            f"upload` resumes it; a folder copied by another tool: `brain-tumor exports seal "
            f"{export_id}`)")
    try:
        record = manifests.read_manifest(store, prefix)
    except manifests.ManifestError as exc:
        raise IncompleteExport(f"export {export_id!r} is not taken: {exc}") from None
    diff = manifests.differences(store, prefix, record, objects) if record else None
    if diff:
        raise IncompleteExport(f"export {export_id!r} does not match its manifest "
                               f"{where}{manifests.MANIFEST_NAME}: {diff.describe()}")


def open_export(store: ObjectStore, settings: Settings, export_id: str,
                workdir: Path) -> ExportFiles:
    """List an export's files (extracting an archive into workdir); ExportError if missing/empty."""
    check_export_id(export_id)
    prefix = settings.key("exports", export_id) + "/"
    objects, sealed = manifests.listed(store, prefix)
    if objects or sealed:
        _check_complete(store, export_id, prefix, objects, sealed)
        loaders = {rel: _key_loader(store, o.key) for rel, o in objects.items()}
        fingerprint = _fingerprint([(rel, o.size, o.etag) for rel, o in objects.items()])
        return ExportFiles(export_id, f"s3://{store.bucket}/{prefix}", loaders, fingerprint,
                           sizes={rel: o.size for rel, o in objects.items()})
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
    names, skipped = _extract(local, root, ArchiveLimits.from_settings(settings))
    if not names and not skipped:
        raise BadExport(f"archive s3://{store.bucket}/{key} holds no files")
    loaders = {n: _file_loader(root / n) for n in names}
    return ExportFiles(export_id, f"s3://{store.bucket}/{key}", loaders, digest,
                       skipped=skipped, sizes=names)
