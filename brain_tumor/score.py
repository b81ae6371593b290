"""Scoring studies with a model version: ``incoming/<study>/`` in, ``scores/<mv>/<study>/`` out.

A study is all-or-nothing: one unusable slice rejects it (a quarantine record is written at
``scores/<mv>/quarantine/<study>.json`` and nothing else). A scored study's outputs are
``slices.parquet``, ``masks/<N>.png`` and ``overlays/<N>.png`` for each tumor slice,
``overview.png`` and ``summary.json``, then the done marker ``scores/<mv>/_done/<study>.json``
last (``put_new``): a study without the marker has no visible result, and re-running it rewrites
the same keys. The markers sit in one flat folder so that one listing tells which studies a model
version has scored.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brain_tumor.datasets import utc_now
from brain_tumor.geometry import study_volume
from brain_tumor.imaging import SliceError, decode_image
from brain_tumor.overlay import contact_sheet, encode_png, overlay
from brain_tumor.predict import LoadedModel, SlicePredictions, predict_slices
from brain_tumor.schemas import validate_record, validate_table
from brain_tumor.settings import Settings
from brain_tumor.storage import ObjectStore

log = logging.getLogger(__name__)

DONE_DIR = "_done"
QUARANTINE = "quarantine"
RESERVED = (".", "..", QUARANTINE, DONE_DIR, "batches")
MAX_OVERVIEW_TILES = 24  # tumor slices on the overview, evenly spaced when there are more
FALLBACK_TILES = 4  # slices on the overview of a study without tumor
_STUDY_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_SLICE_RE = re.compile(r"^.+_(?P<n>\d+)\.tiff?$", re.IGNORECASE)
_MASK_RE = re.compile(r"_mask\.tiff?$", re.IGNORECASE)


class StudyRejected(ValueError):
    """A study that cannot be scored; ``reason`` is a short code, ``files`` the offending keys."""

    def __init__(self, reason: str, detail: str, files: list[str] | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.files = list(files or [])


def is_study_id(name: str) -> bool:
    """Whether name is a valid study id (letters, digits, '.', '_', '-'; not reserved)."""
    return isinstance(name, str) and bool(_STUDY_RE.match(name)) and name not in RESERVED


def check_study_id(study_id: str) -> str:
    """Return study_id if it is letters, digits, '.', '_', '-' and not a reserved name."""
    if not is_study_id(study_id):
        raise ValueError(f"invalid study id {study_id!r}: use letters, digits, '.', '_', '-' "
                         f"(not {', '.join(map(repr, RESERVED))})")
    return study_id


def study_prefix(settings: Settings, study_id: str) -> str:
    """The key prefix holding a study's slices: ``incoming/<study_id>/``."""
    return settings.key("incoming", check_study_id(study_id)) + "/"


def output_key(settings: Settings, model_version: str, study_id: str, name: str) -> str:
    """Key of one scoring output: ``scores/<model_version>/<study_id>/<name>``."""
    return settings.key("scores", model_version, check_study_id(study_id), name)


def quarantine_key(settings: Settings, model_version: str, study_id: str) -> str:
    """Key of a rejected study's record: ``scores/<model_version>/quarantine/<study_id>.json``."""
    return settings.key("scores", model_version, QUARANTINE, f"{check_study_id(study_id)}.json")


def done_key(settings: Settings, model_version: str, study_id: str) -> str:
    """Key of a study's done marker: ``scores/<model_version>/_done/<study_id>.json``."""
    return settings.key("scores", model_version, DONE_DIR, f"{check_study_id(study_id)}.json")


def list_studies(store: ObjectStore, settings: Settings) -> list[str]:
    """Sorted study ids (folder names) under ``incoming/``; invalid folder names are skipped."""
    root = settings.key("incoming")
    studies = []
    for prefix in store.list_dirs(root):
        name = prefix[len(root):].strip("/")
        if is_study_id(name):
            studies.append(name)
        else:
            log.warning("skipping incoming folder with an invalid study id: %r", name)
    return sorted(studies)


def is_done(store: ObjectStore, settings: Settings, model_version: str, study_id: str) -> bool:
    """Whether the study has a complete result for this model version (its done marker exists)."""
    return store.exists(done_key(settings, model_version, study_id))


def load_result(store: ObjectStore, settings: Settings, model_version: str,
                study_id: str) -> dict[str, Any] | None:
    """The study's summary if it is done, else None."""
    if not is_done(store, settings, model_version, study_id):
        return None
    summary = store.get_json(output_key(settings, model_version, study_id, "summary.json"))
    return validate_record("study_summary", summary)


def slice_keys(store: ObjectStore, settings: Settings, study_id: str) -> list[tuple[int, str]]:
    """(slice index, key) of the study's slice TIFFs, at most one folder deep; masks ignored."""
    prefix = study_prefix(settings, study_id)
    found: list[tuple[int, str]] = []
    for obj in store.list(prefix):
        rel = obj.key[len(prefix):]
        name = rel.rsplit("/", 1)[-1]
        match = _SLICE_RE.match(name)
        if match is None or _MASK_RE.search(name) or rel.count("/") > 1:
            log.debug("study %s: ignoring %s", study_id, obj.key)
            continue
        found.append((int(match["n"]), obj.key))
    return sorted(found)


def _reject(store: ObjectStore, settings: Settings, model_version: str, study_id: str,
            reason: str, detail: str, files: list[str]) -> StudyRejected:
    """Write the quarantine record and return the exception to raise."""
    record = {"study_id": study_id, "model_version": model_version, "reason": reason,
              "detail": detail, "files": files, "at": utc_now()}
    store.put_json(quarantine_key(settings, model_version, study_id), record)
    log.warning("study %s rejected (%s): %s", study_id, reason, detail)
    return StudyRejected(reason, detail, files)


def _read_study(store: ObjectStore, settings: Settings,
                keys: list[str]) -> list[np.ndarray | SliceError]:
    """Read (once each) and decode every slice in parallel; a SliceError in place of a bad one."""
    def load(key: str) -> np.ndarray | SliceError:
        try:
            return decode_image(store.get(key))
        except SliceError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=settings.io_workers) as pool:
        return list(pool.map(load, keys))


def _check_slices(keys: list[str], decoded: list[np.ndarray | SliceError],
                  expected_size: int | None) -> tuple[str, str, list[str]] | None:
    """(reason, detail, bad keys) for the first problem of the study, or None if it is usable."""
    bad = [(k, d) for k, d in zip(keys, decoded) if isinstance(d, SliceError)]
    if bad:
        key, err = bad[0]
        detail = f"{len(bad)} of {len(keys)} slice(s) unusable; {key}: {err.detail}"
        return err.reason, detail, [k for k, _ in bad]
    sizes = [tuple(d.shape[:2]) for d in decoded]  # type: ignore[union-attr]
    if expected_size is not None:
        wrong = [k for k, s in zip(keys, sizes) if s != (expected_size, expected_size)]
        if wrong:
            return "wrong_size", (f"{len(wrong)} slice(s) are not {expected_size}x{expected_size}, "
                                  f"e.g. {wrong[0]}"), wrong
    common, _ = Counter(sizes).most_common(1)[0]
    wrong = [k for k, s in zip(keys, sizes) if s != common]
    if wrong:
        seen = sorted({f"{h}x{w}" for h, w in sizes})
        return "wrong_size", (f"slices of one study must share a size; found {', '.join(seen)} "
                              f"({len(wrong)} differ from {common[0]}x{common[1]})"), wrong
    return None


def _slices_table(study_id: str, indices: list[int], keys: list[str],
                  pred: SlicePredictions) -> pd.DataFrame:
    """The scored_slices table of one study."""
    boxes = [g["bbox"] or (None,) * 4 for g in pred.geometry]
    cents = [g["centroid"] or (np.nan, np.nan) for g in pred.geometry]
    df = pd.DataFrame({
        "study_id": study_id, "slice_index": np.asarray(indices, np.int64), "source_key": keys,
        "probability": np.asarray(pred.prob, np.float64),
        "label": np.asarray(pred.label, np.int64),
        "tumor_pixels": np.asarray([g["area"] for g in pred.geometry], np.int64),
        **{f"bbox_{c}": pd.array([b[i] for b in boxes], dtype="Int64")
           for i, c in enumerate(("y0", "x0", "y1", "x1"))},
        "centroid_y": np.asarray([c[0] for c in cents], np.float64),
        "centroid_x": np.asarray([c[1] for c in cents], np.float64),
    })
    return validate_table("scored_slices", df)


def _spread(items: list[int], count: int) -> list[int]:
    """At most count items, evenly spaced, first and last included."""
    picks = np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def score_study(store: ObjectStore, settings: Settings, model: LoadedModel,
                study_id: str) -> dict[str, Any]:
    """Score one study (or skip it if done); raise StudyRejected if any slice is unusable."""
    mv = model.version
    summary_key = output_key(settings, mv, study_id, "summary.json")
    if is_done(store, settings, mv, study_id):
        log.info("study %s already scored with %s; skipping", study_id, mv)
        return {"study_id": study_id, "status": "skipped", **store.get_json(summary_key)}
    found = slice_keys(store, settings, study_id)
    if not found:
        raise _reject(store, settings, mv, study_id, "empty",
                      f"no slice TIFFs under {study_prefix(settings, study_id)}", [])
    dupes = sorted({n for n, c in Counter(n for n, _ in found).items() if c > 1})
    if dupes:
        raise _reject(store, settings, mv, study_id, "duplicate",
                      f"slice number(s) {dupes} appear more than once",
                      [k for n, k in found if n in dupes])
    indices, keys = [n for n, _ in found], [k for _, k in found]
    clock = time.perf_counter()
    decoded = _read_study(store, settings, keys)
    problem = _check_slices(keys, decoded, settings.expected_slice_size)
    if problem is not None:
        raise _reject(store, settings, mv, study_id, *problem)
    images: list[np.ndarray] = decoded  # type: ignore[assignment]
    read_s, clock = time.perf_counter() - clock, time.perf_counter()
    pred = predict_slices(model, images, batch_size=settings.batch_size,
                          mask_threshold=settings.mask_threshold)
    model_s, clock = time.perf_counter() - clock, time.perf_counter()
    table = _slices_table(study_id, indices, keys, pred)
    store.put_parquet(output_key(settings, mv, study_id, "slices.parquet"), table)
    tumor = [i for i in range(len(images)) if pred.label[i]]

    def picture(i: int) -> np.ndarray:
        return overlay(images[i], pred.masks[i], pred.geometry[i]["bbox"], float(pred.prob[i]),
                       int(pred.label[i]))

    def write_tumor_slice(i: int) -> np.ndarray:
        mask_png = encode_png(np.where(pred.masks[i], 255, 0).astype(np.uint8))
        store.put(output_key(settings, mv, study_id, f"masks/{indices[i]}.png"), mask_png,
                  content_type="image/png")
        pic = picture(i)
        store.put(output_key(settings, mv, study_id, f"overlays/{indices[i]}.png"), encode_png(pic),
                  content_type="image/png")
        return pic

    with ThreadPoolExecutor(max_workers=settings.io_workers) as pool:
        pictures = dict(zip(tumor, pool.map(write_tumor_slice, tumor)))
    shown = _spread(tumor, MAX_OVERVIEW_TILES) or _spread(list(range(len(images))), FALLBACK_TILES)
    sheet = contact_sheet([pictures[i] if i in pictures else picture(i) for i in shown])
    store.put(output_key(settings, mv, study_id, "overview.png"), encode_png(sheet),
              content_type="image/png")

    summary = validate_record("study_summary", {
        "study_id": study_id, "model_version": mv,
        "dataset_version": str(model.record["dataset_version"]),
        "tumor_present": bool(tumor), "tumor_slices": len(tumor), "slices": len(images),
        "tumor_volume_voxels": study_volume(pred.masks),
        "max_probability": float(np.max(pred.prob)), "scored_at": utc_now(),
    })
    store.put_json(summary_key, summary)
    done = {"study_id": study_id, "model_version": mv, "at": utc_now()}
    if not store.put_json(done_key(settings, mv, study_id), done, new=True):
        log.info("study %s: done marker already present (scored concurrently)", study_id)
    store.delete(quarantine_key(settings, mv, study_id))  # a fixed, re-uploaded study
    timings = {"read_s": round(read_s, 4), "model_s": round(model_s, 4),
               "write_s": round(time.perf_counter() - clock, 4)}
    log.info("scored study %s with %s: %d slices, %d with tumor (read %.2fs, model %.2fs, "
             "write %.2fs)", study_id, mv, len(images), len(tumor), *timings.values())
    return {"study_id": study_id, "status": "scored", **summary, "timings": timings}


def upload_study(store: ObjectStore, settings: Settings, folder: Path,
                 study_id: str | None = None) -> tuple[str, int]:
    """Upload a local study folder's slice TIFFs (masks left out) to ``incoming/<study_id>/``.

    The study id defaults to the folder name; returns (study id, files uploaded).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"study folder not found: {folder}")
    sid = check_study_id(study_id or folder.name)
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and _SLICE_RE.match(p.name) and not _MASK_RE.search(p.name))
    if not files:
        raise ValueError(f"no slice TIFFs (<name>_<N>.tif) in {folder}")
    prefix = study_prefix(settings, sid)

    def put(path: Path) -> None:
        store.put(prefix + path.name, path.read_bytes(), content_type="image/tiff")

    with ThreadPoolExecutor(max_workers=settings.io_workers) as pool:
        list(pool.map(put, files))
    log.info("uploaded study %s: %d slices to %s", sid, len(files), prefix)
    return sid, len(files)
