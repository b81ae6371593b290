"""Ingest a TCIA export into a new dataset version: check, relabel from masks, merge, commit.

Pure steps (pairing files, checking one slice, per-patient sizes, merging with the parent
manifest) sit beside ``ingest_export``, which reads the export (through ``_check_pairs``) and
writes the version. A failed run writes no version and leaves HEAD and the ledger untouched.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from brain_tumor.ingest.exports import ExportError, ExportFiles, export_fingerprint, open_export
from brain_tumor.ingest.imaging import SliceError, decode_image, decode_mask
from brain_tumor.ingest.labels import relabel
from brain_tumor.ingest.naming import (
    BadName,
    SliceName,
    is_ignored,
    is_slice_file,
    parse_slice_path,
)
from brain_tumor.settings import Settings
from brain_tumor.store.datasets import DatasetStore, code_version, utc_now, version_id
from brain_tumor.store.schemas import SCHEMAS
from brain_tumor.store.storage import ObjectStore

log = logging.getLogger(__name__)


class IngestError(RuntimeError):
    """The ingest failed as a whole (empty export, too many rejects); nothing was written."""


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
    """Pair images with masks by name; unpaired and badly named files go to the quarantine."""
    images: dict[tuple[str, int], tuple[str, SliceName]] = {}
    masks: dict[tuple[str, int], tuple[str, SliceName]] = {}
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
        slot = (name.patient_id, name.slice_index)
        target = masks if name.is_mask else images
        if slot in target:
            rejects.append(reject(export_id, path, "bad_name", f"duplicate of {target[slot][0]}",
                                  name.patient_id, name.slice_index))
            continue
        target[slot] = (path, name)
    pairs = []
    for slot, (path, name) in sorted(images.items()):
        if slot not in masks:
            rejects.append(reject(export_id, path, "missing_mask",
                                  "image has no _mask.tif beside it", *slot))
            continue
        pairs.append(Pair(name.patient_id, name.institution, name.acquisition_date,
                          name.slice_index, path, masks.pop(slot)[0]))
    for slot, (path, _) in sorted(masks.items()):
        rejects.append(reject(export_id, path, "missing_image", "mask has no image beside it",
                              *slot))
    return pairs, rejects


def check_slice(image_bytes: bytes, mask_bytes: bytes) -> dict:
    """Decode and relabel one slice: manifest fields, or SliceError with the reason."""
    image = decode_image(image_bytes)
    mask = decode_mask(mask_bytes)
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

    def __call__(self, pair: Pair) -> tuple[dict | None, list[dict]]:
        eid = self.files.export_id
        image = self.files.loaders[pair.image_path]()
        mask = self.files.loaders[pair.mask_path]()
        image_sha, mask_sha = hashlib.sha256(image).hexdigest(), hashlib.sha256(mask).hexdigest()
        try:
            fields = check_slice(image, mask)
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
    log.info("export %s was ingested already into %s", export_id, entry["dataset_version"])
    quarantine = datasets.quarantine(entry["dataset_version"])
    return IngestResult(export_id, entry["dataset_version"], None, True, entry["counts"],
                        quarantine[quarantine["export_id"] == export_id])


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


def _check_quarantine_share(export_id: str, rejects: list[dict], items: int,
                            max_fraction: float) -> None:
    """Log the quarantined items; IngestError if more than max_fraction of them were rejected."""
    share = len(rejects) / items if items else 1.0
    for r in rejects:
        log.info("quarantined %s/%s: %s (%s)", export_id, r["path"], r["reason"], r["detail"])
    if rejects:
        log.warning("export %s: %d item(s) quarantined: %s", export_id, len(rejects),
                    dict(Counter(r["reason"] for r in rejects)))
    if share > max_fraction:
        reasons = Counter(r["reason"] for r in rejects).most_common()
        raise IngestError(f"export {export_id}: {len(rejects)} of {items} items rejected "
                          f"({share:.0%} > max_quarantine_fraction "
                          f"{max_fraction:.0%}); reasons {reasons}; nothing written")


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


def ingest_export(store: ObjectStore, settings: Settings, export_id: str,
                  progress: bool = False) -> IngestResult:
    """Ingest one export into a new dataset version (idempotent: a re-run changes nothing)."""
    datasets = DatasetStore(store, settings)
    ledger = datasets.ledger()
    head = datasets.head()
    fingerprint = export_fingerprint(store, settings, export_id)
    if export_id in ledger and ledger[export_id]["fingerprint"] == fingerprint:
        return _already_ingested(datasets, ledger[export_id], export_id)
    with tempfile.TemporaryDirectory(prefix="brain-tumor-ingest-") as tmp:
        files = open_export(store, settings, export_id, Path(tmp))
        if export_id in ledger:
            raise IngestError(f"export {export_id} changed since it was ingested into "
                              f"{ledger[export_id]['dataset_version']}; upload changes as a "
                              "new export")
        pairs, rejects = pair_files(export_id, list(files.loaders))
        if not pairs and not rejects:
            raise ExportError(f"export {export_id} at {files.source} holds no slice files")
        base = datasets.manifest(head.version) if head.version else None
        rows, bad = _check_pairs(store, settings, files, pairs, base, progress)
        rejects.extend(bad)
    rows, size_rejects = enforce_sizes(rows, settings.expected_slice_size)
    rejects.extend(size_rejects)
    counts = {"files": len(files.loaders), "slices": len(pairs), "accepted": len(rows),
              "quarantined": len(rejects)}
    _check_quarantine_share(export_id, rejects, len(rows) + len(rejects),
                            settings.max_quarantine_fraction)
    new_quarantine = _as_table("quarantine", rejects)
    quarantine = _merged_quarantine(datasets, head.version, export_id, new_quarantine)
    manifest, changes = merge_manifest(base, _as_table("manifest", rows))
    version = version_id(manifest, quarantine)
    counts.update(added=len(manifest) - (0 if base is None else len(base)), changed=len(changes))
    parent_exports = datasets.record(head.version)["exports"] if head.version else []
    record = _version_record(version, head.version, sorted(set(parent_exports) | {export_id}),
                             manifest, quarantine, changes)
    if datasets.commit(version, manifest, quarantine, changes, record):
        log.info("committed dataset version %s (%s)", version, record["counts"])
    if head.version != version:
        datasets.move_head(version, head)
    datasets.write_ledger({"export_id": export_id, "fingerprint": files.fingerprint,
                           "dataset_version": version, "ingested_at": utc_now(), "counts": counts})
    return IngestResult(export_id, version, head.version, False, counts, new_quarantine)
