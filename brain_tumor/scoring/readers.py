"""Study readers: stored studies in, ``Study`` out (the first seam of scoring).

``TiffFolderReader`` reads the layout the project started with: ``incoming/<study_id>/`` holding
one patient's slice TIFFs named ``<anything>_<N>.tif`` (at most one folder deep; masks and other
files ignored), 8-bit, three channels in the ``kaggle_3m`` order. Every check that rejects a
study lives in the reader, so a rejected study is never half scored.

The first check is completeness: a study is read only when its folder holds its manifest
(``brain_tumor.store.manifests``) and matches it. A study without one, or with files missing,
extra or changed against it, is rejected with reason ``incomplete``; once ``submit`` (or
``brain-tumor studies seal``) writes the manifest, its newer arrival makes it due again.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brain_tumor.ingest.imaging import SliceError, check_header, decode_image
from brain_tumor.ingest.naming import MAX_SLICE_NUMBER, slice_number
from brain_tumor.scoring.contracts import Study, StudyRejected
from brain_tumor.settings import Settings
from brain_tumor.store import manifests
from brain_tumor.store.ids import MAX_NAME_BYTES, check_study_id
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.storage import ObjectInfo

log = logging.getLogger(__name__)

#: a slice file name, matched whole (fullmatch): ``<anything>_<N>.tif``, N in ASCII digits
_SLICE_RE = re.compile(r".+_(?P<n>[0-9]+)\.tiff?", re.IGNORECASE)
_MASK_RE = re.compile(r".*_mask\.tiff?", re.IGNORECASE)


def is_slice_name(name: str) -> bool:
    """Whether a file name is a slice TIFF (``<anything>_<N>.tif``) and not a mask."""
    return _SLICE_RE.fullmatch(name) is not None and _MASK_RE.fullmatch(name) is None


def check_file_name(name: str) -> str:
    """name if it fits in a study folder's keys (at most MAX_NAME_BYTES), else ValueError."""
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        raise ValueError(f"file name must be at most {MAX_NAME_BYTES} bytes, received {size} "
                         f"bytes ({name!r:.80})")
    return name


@dataclass(frozen=True)
class StudyLimits:
    """How big a study may be: bytes of a slice file, pixels of a slice, slices, and pixels of
    all slices together (what its decoded slices take: 3 bytes a pixel)."""

    file_bytes: int
    slice_pixels: int
    study_slices: int
    study_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> StudyLimits:
        """max_file_bytes, max_slice_pixels, max_study_slices and max_study_pixels."""
        return cls(settings.max_file_bytes, settings.max_slice_pixels, settings.max_study_slices,
                   settings.max_study_pixels)


def _unusable(keys: list[str], results: list[object]) -> tuple[str, str, list[str]] | None:
    """(reason, detail, bad keys) naming the first SliceError among results, or None."""
    bad = [(k, d) for k, d in zip(keys, results, strict=True) if isinstance(d, SliceError)]
    if not bad:
        return None
    key, err = bad[0]
    detail = f"{len(bad)} of {len(keys)} slice(s) unusable; {key}: {err.detail}"
    return err.reason, detail, [k for k, _ in bad]


def check_study_listing(keys: list[str], sizes: list[int],
                        limits: StudyLimits) -> tuple[str, str, list[str]] | None:
    """(reason, detail, keys) when a study's listing is over its limits, else None: more slices
    than ``study_slices`` (``too_many_slices``), files over ``file_bytes`` (``too_large``)."""
    if len(keys) > limits.study_slices:
        return "too_many_slices", (f"{len(keys)} slices, the most accepted is "
                                   f"{limits.study_slices} (max_study_slices); none was read"), []
    big = [(k, s) for k, s in zip(keys, sizes, strict=True) if s > limits.file_bytes]
    if big:
        return "too_large", (f"{len(big)} slice file(s) over the limit of {limits.file_bytes:,} "
                             f"bytes (max_file_bytes), e.g. {big[0][0]} ({big[0][1]:,} bytes); "
                             f"none was read"), [k for k, _ in big]
    return None


def check_study_pixels(keys: list[str], pixels: list[int],
                       limits: StudyLimits) -> tuple[str, str, list[str]] | None:
    """(``too_large``, detail, every key) when the slices' pixels by their headers add up to
    more than ``study_pixels``, else None."""
    if sum(pixels) <= limits.study_pixels:
        return None
    return "too_large", (f"the {len(keys)} slices hold {sum(pixels):,} pixels by their headers, "
                         f"over the limit of {limits.study_pixels:,} pixels (max_study_pixels)"
                         ), list(keys)


def check_slices(keys: list[str], decoded: list[np.ndarray | SliceError],
                 expected_size: int | None) -> tuple[str, str, list[str]] | None:
    """(reason, detail, bad keys) for the first problem of a study, or None if it is usable."""
    problem = _unusable(keys, decoded)  # type: ignore[arg-type]
    if problem is not None:
        return problem
    sizes = [tuple(d.shape[:2]) for d in decoded]  # type: ignore[union-attr]
    if expected_size is not None:
        wrong = [k for k, s in zip(keys, sizes, strict=True) if s != (expected_size, expected_size)]
        if wrong:
            return "wrong_size", (f"{len(wrong)} slice(s) are not {expected_size}x{expected_size}, "
                                  f"e.g. {wrong[0]}"), wrong
    common, _ = Counter(sizes).most_common(1)[0]
    wrong = [k for k, s in zip(keys, sizes, strict=True) if s != common]
    if wrong:
        seen = sorted({f"{h}x{w}" for h, w in sizes})
        return "wrong_size", (f"slices of one study must share a size; found {', '.join(seen)} "
                              f"({len(wrong)} differ from {common[0]}x{common[1]})"), wrong
    return None


class TiffFolderReader:
    """Reads ``incoming/<study_id>/`` folders of 8-bit RGB slice TIFFs, within ``limits`` (by
    default those of the incoming store's settings)."""

    def __init__(self, incoming: IncomingStore, io_workers: int = 8,
                 expected_size: int | None = None, limits: StudyLimits | None = None) -> None:
        self.incoming = incoming
        self.io_workers = io_workers
        self.expected_size = expected_size
        self.limits = limits or StudyLimits.from_settings(incoming.settings)

    def check_complete(self, study_id: str) -> list[tuple[str, ObjectInfo]]:
        """The study's objects once it is sealed and matches its manifest; else StudyRejected
        with reason ``incomplete`` naming what differs."""
        objects = list(self.incoming.objects(study_id))
        prefix = self.incoming.prefix(study_id)
        try:
            record = self.incoming.manifest(study_id)
        except manifests.ManifestError as exc:
            raise StudyRejected("incomplete", str(exc)) from None
        if record is None:
            raise StudyRejected("incomplete", (
                f"{len(objects)} file(s) under {prefix} and no {manifests.MANIFEST_NAME}: the "
                f"upload is not finished (`brain-tumor submit` resumes it; a folder copied by "
                f"another tool: `brain-tumor studies seal {study_id}`)"))
        diff = self.incoming.differences(study_id, record, dict(objects))
        if diff:
            raise StudyRejected("incomplete", f"{prefix} does not match its manifest: "
                                              f"{diff.describe()}",
                                [prefix + path for path in diff.files])
        return objects

    def slice_keys(self, study_id: str,
                   objects: list[tuple[str, ObjectInfo]] | None = None) -> list[tuple[int, str]]:
        """(slice number, key) of the study's slice TIFFs, sorted; other objects ignored.

        A slice number over ``MAX_SLICE_NUMBER`` rejects the study (``bad_name``).
        """
        found: list[tuple[int, str]] = []
        too_big: list[str] = []
        if objects is None:
            objects = list(self.incoming.objects(study_id))
        for rel, obj in objects:
            name = rel.rsplit("/", 1)[-1]
            if not is_slice_name(name) or rel.count("/") > 1:
                log.debug("study %s: ignoring %r", study_id, obj.key)
                continue
            number = slice_number(_SLICE_RE.fullmatch(name)["n"])  # type: ignore[index]
            if number is None:
                too_big.append(obj.key)
            else:
                found.append((number, obj.key))
        if too_big:
            raise StudyRejected("bad_name", f"{len(too_big)} slice file(s) have a slice number "
                                            f"over {MAX_SLICE_NUMBER}, e.g. {too_big[0]!r:.200}",
                                too_big)
        return sorted(found)

    def _decode_all(self, keys: list[str]) -> list[tuple[int | None, np.ndarray | SliceError
                                                          | None]]:
        """Read (once each) and decode every slice in parallel: (pixels by its header, decoded
        slice or SliceError) each; pixels None when the header check failed. A slice that
        would take the study past ``study_pixels`` is not decoded (None)."""
        left = [self.limits.study_pixels]
        lock = threading.Lock()

        def load(key: str) -> tuple[int | None, np.ndarray | SliceError | None]:
            try:
                data = self.incoming.get(key)
                if len(data) > self.limits.file_bytes:  # grown since it was listed
                    raise SliceError("too_large", f"{len(data):,} bytes, over the limit of "
                                                  f"{self.limits.file_bytes:,} (max_file_bytes)")
                pixels = check_header(data, "image", self.limits.slice_pixels).pixels
            except SliceError as exc:
                return None, exc
            with lock:
                left[0] -= pixels
                fits = left[0] >= 0
            if not fits:
                return pixels, None
            try:
                return pixels, decode_image(data, max_pixels=self.limits.slice_pixels)
            except SliceError as exc:
                return pixels, exc

        with ThreadPoolExecutor(max_workers=self.io_workers) as pool:
            return list(pool.map(load, keys))

    def read(self, study_id: str) -> Study:
        """Read and check every slice; StudyRejected names the first problem and its files.

        Within ``limits``: the slice count and file sizes are checked from the listing before
        anything is read, each slice's pixels from its TIFF header before it is decoded, and
        the study's pixels in all before any slice past them is decoded.
        """
        objects = self.check_complete(study_id)
        found = self.slice_keys(study_id, objects)
        if not found:
            raise StudyRejected("empty", f"no slice TIFFs under {self.incoming.prefix(study_id)}")
        indices, keys = [n for n, _ in found], [k for _, k in found]
        listed = {obj.key: obj.size for _, obj in objects}
        problem = check_study_listing(keys, [listed[k] for k in keys], self.limits)
        if problem is not None:
            raise StudyRejected(*problem)
        dupes = sorted({n for n, c in Counter(indices).items() if c > 1})
        if dupes:
            raise StudyRejected("duplicate", f"slice number(s) {dupes} appear more than once",
                                [k for n, k in found if n in dupes])
        loaded = self._decode_all(keys)
        problem = (_unusable(keys, [r if px is None else None for px, r in loaded])
                   or check_study_pixels(keys, [px or 0 for px, _ in loaded], self.limits)
                   or check_slices(keys, [r for _, r in loaded], self.expected_size))
        if problem is not None:
            raise StudyRejected(*problem)
        images: list[np.ndarray] = [r for _, r in loaded]  # type: ignore[misc]
        return Study(study_id, images, indices, keys, meta={"format": "tiff"})


def upload_study(incoming: IncomingStore, folder: Path, study_id: str | None = None,
                 io_workers: int = 8) -> tuple[str, int]:
    """Upload a local folder's slice TIFFs (masks left out) as ``incoming/<study_id>/``, then
    the study's manifest, which makes it complete.

    Slices already stored unchanged are not sent again, so a second call resumes an
    interrupted upload; a changed slice is sent again and the manifest rewritten (a study may
    be sent anew). Refused when the stored study holds files the folder does not. The study id
    defaults to the folder name; returns (study id, slices in the study).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"study folder not found: {folder}")
    sid = check_study_id(study_id or folder.name)
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_slice_name(p.name))
    if not files:
        raise ValueError(f"no slice TIFFs (<name>_<N>.tif) in {folder}")
    for path in files:
        check_file_name(path.name)
    local = manifests.hash_files(folder, files, io_workers)
    counts = manifests.upload_folder(incoming.store, incoming.prefix(sid), "study", sid, local,
                                     workers=io_workers, replace=True, content_type="image/tiff")
    log.info("uploaded study %s: %d slices to %s (%d sent, %d already there)", sid, len(files),
             incoming.prefix(sid), counts["sent"], counts["kept"])
    return sid, len(files)


def study_reader(incoming: IncomingStore, settings: Settings) -> TiffFolderReader:
    """The reader for studies in ``incoming/``."""
    return TiffFolderReader(incoming, settings.io_workers, settings.expected_slice_size)
