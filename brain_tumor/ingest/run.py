"""Ingest a TCIA export into a new dataset version: check, relabel from masks, merge, commit.

Pure steps (pairing files, checking one slice, per-patient sizes, merging with the parent
manifest) sit beside ``ingest_export``, which reads the export (through ``_check_pairs``) and
writes the version. A failed run writes no version and leaves HEAD and the ledger untouched;
``ingest_exports`` takes several in order and records a bad one as rejected in the ledger, so
the others (and later runs) go on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd
from tqdm import tqdm

from brain_tumor.ingest.exports import (
    BadExport,
    ExportError,
    ExportFiles,
    check_export_id,
    export_fingerprint,
    open_export,
)
from brain_tumor.ingest.imaging import MIN_SLICE_SIZE, SliceError, decode_image, decode_mask
from brain_tumor.ingest.labels import relabel
from brain_tumor.ingest.naming import (
    BadName,
    SliceName,
    is_ignored,
    is_slice_file,
    parse_slice_path,
)
from brain_tumor.settings import Settings
from brain_tumor.store.datasets import (
    DUPLICATE,
    INGESTED,
    REJECTED,
    DatasetStore,
    Head,
    code_version,
    utc_now,
    version_id,
)
from brain_tumor.store.leases import LeaseHeld, held
from brain_tumor.store.schemas import SCHEMAS
from brain_tumor.store.storage import ObjectStore, PreconditionFailed

log = logging.getLogger(__name__)

#: name prefix of an ingest's work folder under ``<home>/tmp/`` (extracted archives)
WORKDIR_PREFIX = "brain-tumor-ingest-"
#: a work folder older than this whose process is gone is left over by a killed ingest
STALE_WORKDIR_SECONDS = 3600
#: the longest rejection reason kept in the ledger
MAX_REASON_CHARS = 2000


class IngestError(RuntimeError):
    """The ingest failed as a whole (empty export, too many rejects); nothing was written."""


class TooManyRejects(IngestError):
    """More of the export was rejected than ``max_quarantine_fraction`` allows, or no slice at
    all was accepted; ``counts`` says what was seen."""

    def __init__(self, message: str, counts: dict[str, int]) -> None:
        super().__init__(message)
        self.counts = counts


class ExportRejected(IngestError):
    """The export is recorded as rejected in the ledger; ``brain-tumor exports retry`` clears
    that."""


class IngestBusy(IngestError):
    """Another ingest of the same export holds its lease; this one wrote nothing."""


@dataclass
class Pair:
    """An image and its mask (paths inside the export)."""

    patient_id: str
    institution: str
    acquisition_date: str
    slice_index: int
    image_path: str
    mask_path: str


@dataclass
class IngestResult:
    """What one ingest did."""

    export_id: str
    dataset_version: str
    parent: str | None
    already_ingested: bool
    counts: dict[str, int]
    quarantine: pd.DataFrame = field(repr=False)
    #: ingested (the version lists the export) or duplicate (it added nothing; see ``note``)
    status: str = INGESTED
    note: str | None = None


@dataclass
class Rejection:
    """An export that was not taken in, and why; ``recorded`` when the ledger says rejected."""

    export_id: str
    reason: str
    recorded: bool


@dataclass
class IngestRun:
    """What ``ingest_exports`` did with each export it was given."""

    results: list[IngestResult]
    rejected: list[Rejection]


def _empty(name: str) -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series(dtype="Int64" if c.kind == "int" and c.nullable else
                                           "int64" if c.kind == "int" else "object")
                         for c in SCHEMAS[name].cols})


def reject(export_id: str, path: str, reason: str, detail: str, patient_id: str | None = None,
           slice_index: int | None = None, sha256: str | None = None,
           blob_key: str | None = None) -> dict:
    """One quarantine row."""
    return {"export_id": export_id, "path": path, "patient_id": patient_id,
            "slice_index": slice_index, "reason": reason, "detail": detail, "sha256": sha256,
            "blob_key": blob_key}


def pair_files(export_id: str, paths: list[str]) -> tuple[list[Pair], list[dict]]:
    """Pair each image with the mask in its own folder; badly named and unpaired files go to the
    quarantine, and so does every copy of a slice that is in more than one file or folder."""
    slots: dict[tuple[str, int], list[tuple[str, SliceName]]] = {}
    rejects: list[dict] = []
    for path in sorted(paths):
        if not is_slice_file(path):
            if not is_ignored(path):
                rejects.append(reject(export_id, path, "bad_name", "not a .tif file of the layout"))
            continue
        try:
            name = parse_slice_path(path)
        except BadName as exc:
            rejects.append(reject(export_id, path, "bad_name", str(exc)))
            continue
        slots.setdefault((name.patient_id, name.slice_index), []).append((path, name))
    pairs = []
    for slot, files in sorted(slots.items()):
        images = [(p, n) for p, n in files if not n.is_mask]
        masks = [p for p, n in files if n.is_mask]
        if len(images) > 1 or len(masks) > 1 or len({PurePosixPath(p).parent
                                                      for p, _ in files}) > 1:
            rejects += duplicate_rejects(export_id, slot, [p for p, _ in files])
        elif not masks:
            rejects.append(reject(export_id, images[0][0], "missing_mask",
                                  "image has no _mask.tif beside it", *slot))
        elif not images:
            rejects.append(reject(export_id, masks[0], "missing_image",
                                  "mask has no image beside it", *slot))
        else:
            (path, name), = images
            pairs.append(Pair(name.patient_id, name.institution, name.acquisition_date,
                              name.slice_index, path, masks[0]))
    return pairs, rejects


def duplicate_rejects(export_id: str, slot: tuple[str, int], paths: list[str]) -> list[dict]:
    """One ``duplicate_slice`` row per file of a slice found more than once, naming the others."""
    shown = ", ".join(f"{p!r:.300}" for p in paths[:6]) + (" ..." if len(paths) > 6 else "")
    detail = (f"slice {slot[1]} of {slot[0]} is in {len(paths)} files ({shown}); which is right "
              "cannot be told, none is used")
    return [reject(export_id, p, "duplicate_slice", detail, *slot) for p in paths]


def check_slice(image_bytes: bytes, mask_bytes: bytes, max_pixels: int | None = None) -> dict:
    """Decode and relabel one slice: manifest fields, or SliceError with the reason (files over
    max_pixels by their TIFF header are not decoded: ``too_large``)."""
    image = decode_image(image_bytes, MIN_SLICE_SIZE, max_pixels)
    mask = decode_mask(mask_bytes, MIN_SLICE_SIZE, max_pixels)
    if image.shape[:2] != mask.shape:
        raise SliceError("shape_mismatch", f"image is {image.shape[0]}x{image.shape[1]}, mask is "
                                           f"{mask.shape[0]}x{mask.shape[1]}")
    lab = relabel(mask)
    y0, x0, y1, x1 = lab.bbox if lab.bbox else (None, None, None, None)
    return {"height": image.shape[0], "width": image.shape[1], "label": lab.label,
            "tumor_pixels": lab.tumor_pixels, "bbox_y0": y0, "bbox_x0": x0, "bbox_y1": y1,
            "bbox_x1": x1}


def enforce_sizes(rows: list[dict], expected: int | None) -> tuple[list[dict], list[dict]]:
    """Reject slices whose size differs from ``expected`` or from their patient's usual size."""
    usual: dict[str, tuple[int, int]] = {}
    by_patient: dict[str, Counter] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], Counter())[(r["height"], r["width"])] += 1
    for patient, counter in by_patient.items():
        usual[patient] = max(counter.items(), key=lambda kv: (kv[1], kv[0]))[0]
    keep, rejects = [], []
    for r in rows:
        size = (r["height"], r["width"])
        want = (expected, expected) if expected else usual[r["patient_id"]]
        if size != want:
            rejects.append(reject(r["export_id"], r["source_path"], "wrong_size",
                                  f"slice is {size[0]}x{size[1]}, expected {want[0]}x{want[1]}"
                                  + ("" if expected else " like the patient's other slices"),
                                  r["patient_id"], r["slice_index"], r["image_sha256"]))
        else:
            keep.append(r)
    return keep, rejects


def merge_manifest(base: pd.DataFrame | None,
                   new: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge new slices into the parent manifest: a changed slice supersedes the old one."""
    changes = _empty("changes")
    if base is None or base.empty:
        return new.sort_values(["patient_id", "slice_index"]).reset_index(drop=True), changes
    old = base.set_index(["patient_id", "slice_index"])
    fresh = new.set_index(["patient_id", "slice_index"])
    common = old.index.intersection(fresh.index)
    differ = [i for i in common if (old.at[i, "image_sha256"], old.at[i, "mask_sha256"])
              != (fresh.at[i, "image_sha256"], fresh.at[i, "mask_sha256"])]
    if differ:
        changes = pd.DataFrame([{
            "patient_id": i[0], "slice_index": int(i[1]),
            "old_image_sha256": old.at[i, "image_sha256"],
            "new_image_sha256": fresh.at[i, "image_sha256"],
            "old_mask_sha256": old.at[i, "mask_sha256"],
            "new_mask_sha256": fresh.at[i, "mask_sha256"],
            "old_label": int(old.at[i, "label"]), "new_label": int(fresh.at[i, "label"]),
            "old_export_id": old.at[i, "export_id"], "new_export_id": fresh.at[i, "export_id"],
        } for i in differ])
    unchanged = common.difference(pd.MultiIndex.from_tuples(differ, names=common.names)
                                  if differ else common[:0])
    merged = pd.concat([old, fresh.drop(index=unchanged)])
    merged = merged[~merged.index.duplicated(keep="last")].reset_index()
    return merged.sort_values(["patient_id", "slice_index"]).reset_index(drop=True), changes


def _as_table(name: str, rows: list[dict]) -> pd.DataFrame:
    if not rows:
        return _empty(name)
    df = pd.DataFrame(rows)
    for col in SCHEMAS[name].cols:
        if col.kind == "int":
            df[col.name] = df[col.name].astype("Int64" if col.nullable else "int64")
    return df


class _Worker:
    """Reads, checks and stores one pair (runs in threads)."""

    def __init__(self, store: ObjectStore, settings: Settings, files: ExportFiles,
                 known: set[str]) -> None:
        self.store, self.settings, self.files, self.known = store, settings, files, known
        self.lock = threading.Lock()

    def blob(self, sha: str, data: bytes) -> str:
        key = self.settings.key("blobs", f"{sha}.tif")
        with self.lock:  # identical files (e.g. the many empty masks) are stored once per run
            new = sha not in self.known
            self.known.add(sha)
        if new:
            self.store.put_new(key, data, content_type="image/tiff")
        return key

    def too_large(self, pair: Pair, path: str, size: int) -> dict | None:
        """The quarantine row of a file over max_file_bytes (reason and size, no bytes kept)."""
        limit = self.settings.max_file_bytes
        if size <= limit:
            return None
        return reject(self.files.export_id, path, "too_large",
                      f"{size:,} bytes, over the limit of {limit:,} bytes (max_file_bytes); not "
                      f"read", pair.patient_id, pair.slice_index)

    def __call__(self, pair: Pair) -> tuple[dict | None, list[dict]]:
        eid = self.files.export_id
        paths = (pair.image_path, pair.mask_path)
        listed = [self.too_large(pair, p, self.files.sizes.get(p, 0)) for p in paths]
        if any(listed):
            return None, [r for r in listed if r]
        image = self.files.loaders[pair.image_path]()
        mask = self.files.loaders[pair.mask_path]()
        read = [self.too_large(pair, p, len(data)) for p, data in zip(paths, (image, mask),
                                                                       strict=True)]
        if any(read):  # grown since it was listed
            return None, [r for r in read if r]
        image_sha, mask_sha = hashlib.sha256(image).hexdigest(), hashlib.sha256(mask).hexdigest()
        try:
            fields = check_slice(image, mask, self.settings.max_slice_pixels)
        except SliceError as exc:
            bad_path, bad_sha, bad = ((pair.mask_path, mask_sha, mask) if exc.part == "mask" else
                                      (pair.image_path, image_sha, image))
            return None, [reject(eid, bad_path, exc.reason, exc.detail, pair.patient_id,
                                 pair.slice_index, bad_sha, self.blob(bad_sha, bad))]
        row = {"patient_id": pair.patient_id, "institution": pair.institution,
               "acquisition_date": pair.acquisition_date, "slice_index": pair.slice_index,
               "image_key": self.blob(image_sha, image), "mask_key": self.blob(mask_sha, mask),
               "image_sha256": image_sha, "mask_sha256": mask_sha, **fields,
               "export_id": eid, "source_path": pair.image_path}
        return row, []


def _already_ingested(datasets: DatasetStore, entry: dict, export_id: str) -> IngestResult:
    """The result of the earlier ingest of an unchanged export (nothing is written)."""
    log.info("export %s was ingested already into %s (%s)", export_id, entry["dataset_version"],
             entry["status"])
    quarantine = datasets.quarantine(entry["dataset_version"])
    return IngestResult(export_id, entry["dataset_version"], None, True, entry["counts"],
                        quarantine[quarantine["export_id"] == export_id], entry["status"],
                        entry["reason"])


def _check_pairs(store: ObjectStore, settings: Settings, files: ExportFiles, pairs: list[Pair],
                 base: pd.DataFrame | None, progress: bool) -> tuple[list[dict], list[dict]]:
    """Read, check and store every pair in threads: (manifest rows, quarantine rows)."""
    known = set() if base is None else set(base["image_sha256"]) | set(base["mask_sha256"])
    worker = _Worker(store, settings, files, known)
    rows: list[dict] = []
    rejects: list[dict] = []
    with ThreadPoolExecutor(settings.io_workers) as pool:
        for row, bad in tqdm(pool.map(worker, pairs), total=len(pairs), disable=not progress,
                             desc=f"ingest {files.export_id}", unit="slice"):
            rejects.extend(bad)
            if row:
                rows.append(row)
    return rows, rejects


def _check_quarantine_share(export_id: str, rejects: list[dict], accepted: int,
                            max_fraction: float, counts: dict[str, int]) -> None:
    """Log the quarantined items; TooManyRejects if more than max_fraction of them were
    rejected or none was accepted."""
    items = accepted + len(rejects)
    share = len(rejects) / items if items else 1.0
    for r in rejects:
        log.info("quarantined %s/%s: %s (%s)", export_id, r["path"], r["reason"], r["detail"])
    if rejects:
        log.warning("export %s: %d item(s) quarantined: %s", export_id, len(rejects),
                    dict(Counter(r["reason"] for r in rejects)))
    if share > max_fraction or not accepted:
        reasons = Counter(r["reason"] for r in rejects).most_common()
        examples = "; ".join(f"{r['path']!r:.200}: {r['reason']} ({r['detail']:.200})"
                             for r in rejects[:3])
        what = (f"{share:.0%} > max_quarantine_fraction {max_fraction:.0%}" if accepted
                else "no slice accepted")
        raise TooManyRejects(f"export {export_id}: {len(rejects)} of {items} items rejected "
                             f"({what}); reasons {reasons}; e.g. {examples}; nothing written",
                             counts)


def _merged_quarantine(datasets: DatasetStore, parent: str | None, export_id: str,
                       new_quarantine: pd.DataFrame) -> pd.DataFrame:
    """The parent's quarantine without this export's earlier rows, plus this export's rows."""
    if not parent:
        return new_quarantine
    old_q = datasets.quarantine(parent)
    old_q = old_q[old_q["export_id"] != export_id]
    return pd.concat([old_q, new_quarantine], ignore_index=True) if len(old_q) else new_quarantine


def _version_record(version: str, parent: str | None, exports: list[str],
                    manifest: pd.DataFrame, quarantine: pd.DataFrame,
                    changes: pd.DataFrame) -> dict:
    """The dataset_version record of a new version."""
    return {"version": version, "parent": parent, "exports": exports,
            "created_at": utc_now(), "code_version": code_version(),
            "counts": {"patients": int(manifest["patient_id"].nunique()),
                       "slices": len(manifest), "tumor_slices": int(manifest["label"].sum()),
                       "quarantined": len(quarantine), "changed": len(changes)}}


def workdir_root(settings: Settings) -> Path:
    """The folder ingest work folders live in (``<home>/tmp``), created."""
    root = settings.home_dir / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _owner_alive(folder: Path) -> bool:
    """Whether the process named in a work folder's name (prefix + pid) runs on this machine."""
    pid = folder.name[len(WORKDIR_PREFIX):].split("-", 1)[0]
    if not pid.isdigit() or not 0 < int(pid) < 2**31:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_stale_workdirs(root: Path, max_age_s: float = STALE_WORKDIR_SECONDS) -> list[Path]:
    """Remove work folders of killed ingests under root: older than max_age_s and their process
    gone. Returns the folders removed."""
    removed = []
    now = time.time()
    for folder in sorted(root.glob(WORKDIR_PREFIX + "*")):
        try:
            age = now - folder.stat().st_mtime
        except FileNotFoundError:  # its own ingest just finished
            continue
        if age <= max_age_s or _owner_alive(folder):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        log.warning("removed %s, left by an ingest that did not finish (%.1f h old)", folder,
                    age / 3600)
        removed.append(folder)
    return removed


def _ingested_meanwhile(datasets: DatasetStore, export_id: str,
                        fingerprint: str) -> IngestResult | None:
    """The result of another ingest of the same export that finished while this one ran."""
    entry = datasets.entry(export_id)
    if entry is None or entry["status"] == REJECTED or entry["fingerprint"] != fingerprint:
        return None
    log.warning("export %s was ingested into %s by another ingest while this one ran; this run "
                "writes nothing more", export_id, entry["dataset_version"])
    return _already_ingested(datasets, entry, export_id)


def _move_head(datasets: DatasetStore, version: str, head: Head, export_id: str) -> None:
    """Move HEAD from what was read to version; another ingest moving it meanwhile is named."""
    try:
        datasets.move_head(version, head)
    except PreconditionFailed as exc:
        now = datasets.head()
        if now.version == version:
            log.warning("dataset HEAD was moved to %s by another ingest at the same time (of "
                        "export %s or one with the same slices); keeping it", version, export_id)
            return
        raise IngestError(f"export {export_id}: dataset HEAD moved from {head.version} to "
                          f"{now.version} while this ingest ran (another ingest at the same "
                          f"time); HEAD and the ledger are unchanged by this run: run the "
                          f"ingest of {export_id} again") from exc


def lease_key(settings: Settings, export_id: str) -> str:
    """Key of the lease an ingest of the export holds while it runs."""
    return settings.key("ledger", "leases", f"{export_id}.json")


def ingest_export(store: ObjectStore, settings: Settings, export_id: str,
                  progress: bool = False) -> IngestResult:
    """Ingest one export into a new dataset version (idempotent: a re-run changes nothing).

    Holds the export's lease (``ledger/leases/<export_id>.json``) while it runs: IngestBusy,
    before anything else is read or written, when another ingest of it holds the lease.
    Raises BadExport / TooManyRejects for an export that cannot be taken in, ExportRejected for
    one the ledger says is rejected; writes nothing then (``ingest_exports`` records them).
    """
    key = lease_key(settings, check_export_id(export_id))
    try:
        with held(store, key, f"the ingest of export {export_id}",
                  settings.ingest_lease_minutes):
            return _ingest_leased(store, settings, export_id, progress)
    except LeaseHeld as exc:
        raise IngestBusy(f"export {export_id} is being ingested by another process: {exc}; this "
                         f"ingest stops and writes nothing. Run it again once that one ends "
                         f"(a lease whose process was killed is taken over when it expires, or "
                         f"at once on the same host)") from None


def _ingest_leased(store: ObjectStore, settings: Settings, export_id: str,
                   progress: bool) -> IngestResult:
    """ingest_export's work, run while holding the export's lease."""
    datasets = DatasetStore(store, settings)
    entry = datasets.entry(export_id)
    if entry is not None and entry["status"] == REJECTED:
        raise ExportRejected(f"export {export_id} was rejected ({entry['reason']}); after fixing "
                             f"the cause run `brain-tumor exports retry {export_id}`")
    head = datasets.head()
    fingerprint = export_fingerprint(store, settings, export_id)
    if entry is not None and entry["fingerprint"] == fingerprint:
        return _already_ingested(datasets, entry, export_id)
    root = workdir_root(settings)
    clean_stale_workdirs(root)
    with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=root) as tmp:
        files = open_export(store, settings, export_id, Path(tmp))
        if entry is not None:
            raise IngestError(f"export {export_id} changed since it was ingested into "
                              f"{entry['dataset_version']}; upload changes as a new export")
        pairs, rejects = pair_files(export_id, list(files.loaders))
        rejects = [reject(export_id, *item) for item in files.skipped] + rejects
        if not pairs and not rejects:
            raise BadExport(f"export {export_id} at {files.source} holds no slice files")
        base = datasets.manifest(head.version) if head.version else None
        rows, bad = _check_pairs(store, settings, files, pairs, base, progress)
        rejects.extend(bad)
    rows, size_rejects = enforce_sizes(rows, settings.expected_slice_size)
    rejects.extend(size_rejects)
    counts = {"files": len(files.loaders) + len(files.skipped), "slices": len(pairs),
              "accepted": len(rows), "quarantined": len(rejects)}
    _check_quarantine_share(export_id, rejects, len(rows), settings.max_quarantine_fraction,
                            counts)
    new_quarantine = _as_table("quarantine", rejects)
    quarantine = _merged_quarantine(datasets, head.version, export_id, new_quarantine)
    manifest, changes = merge_manifest(base, _as_table("manifest", rows))
    version = version_id(manifest, quarantine)
    counts.update(added=len(manifest) - (0 if base is None else len(base)), changed=len(changes))
    parent_exports = datasets.record(head.version)["exports"] if head.version else []
    record = _version_record(version, head.version, sorted(set(parent_exports) | {export_id}),
                             manifest, quarantine, changes)
    if (raced := _ingested_meanwhile(datasets, export_id, files.fingerprint)) is not None:
        return raced
    status, note = INGESTED, None
    if datasets.commit(version, manifest, quarantine, changes, record):
        log.info("committed dataset version %s (%s)", version, record["counts"])
    elif export_id not in (earlier := datasets.record(version)["exports"]):
        status = DUPLICATE
        note = (f"adds nothing: dataset version {version} holds all of it already (from "
                f"export(s) {', '.join(earlier)})")
        log.info("export %s %s", export_id, note)
    if head.version != version:
        _move_head(datasets, version, head, export_id)
    if not datasets.write_ledger({"export_id": export_id, "status": status, "reason": note,
                                  "fingerprint": files.fingerprint, "dataset_version": version,
                                  "ingested_at": utc_now(), "counts": counts}):
        log.warning("export %s has a ledger entry already (another ingest of it); kept that one",
                    export_id)
    return IngestResult(export_id, version, head.version, False, counts, new_quarantine, status,
                        note)


def reject_export(store: ObjectStore, settings: Settings, export_id: str, reason: str,
                  counts: dict[str, int] | None = None) -> bool:
    """Record an export as rejected in the ledger (not taken in until an operator retries it).

    False when it was taken in already (its entry stays) or when it does not exist.
    """
    fingerprint = export_fingerprint(store, settings, export_id)
    if fingerprint is None:
        return False
    reason = reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS] + "..."
    written = DatasetStore(store, settings).write_ledger({
        "export_id": export_id, "status": REJECTED, "reason": reason,
        "fingerprint": fingerprint, "dataset_version": None, "ingested_at": utc_now(),
        "counts": counts or {}})
    if written:
        log.warning("export %s rejected: %s", export_id, reason)
    return written


def ingest_exports(store: ObjectStore, settings: Settings, export_ids: list[str],
                   progress: bool = False) -> IngestRun:
    """Ingest exports in order; a bad one is recorded as rejected and the others go on.

    Bad (recorded): empty, unreadable archive, too many rejects or none accepted. Not recorded,
    reported only: a missing export, a failed archive download, an ingested export that
    changed, one rejected before. A storage error stops the run (a retry resumes it).
    """
    run = IngestRun([], [])
    for export_id in export_ids:
        try:
            run.results.append(ingest_export(store, settings, export_id, progress=progress))
        except (BadExport, TooManyRejects) as exc:
            counts = exc.counts if isinstance(exc, TooManyRejects) else None
            recorded = reject_export(store, settings, export_id, str(exc), counts)
            run.rejected.append(Rejection(export_id, str(exc), recorded))
        except (ExportError, IngestError) as exc:
            log.warning("export %s not ingested: %s", export_id, exc)
            run.rejected.append(Rejection(export_id, str(exc), isinstance(exc, ExportRejected)))
    return run
