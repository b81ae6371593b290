"""Study readers: stored studies in, ``Study`` out (the first seam of scoring).

``StudyFolderReader`` (what ``study_reader`` returns) looks at what a study folder
``incoming/<study_id>/`` holds and reads it the way its format calls for, in this order:

* slice TIFFs ``<anything>_<N>.tif`` (at most one folder deep; masks and other files ignored),
  8-bit, three channels in the ``kaggle_3m`` order: ``TiffFolderReader``;
* NIfTI volumes (``.nii``, ``.nii.gz``), one per sequence: ``clinical.nifti``;
* DICOM instances (``.dcm`` files, files with the ``DICM`` marker at byte 128, or ``.zip``
  archives of them): ``clinical.dicom``.

A NIfTI or DICOM study is downloaded to a temporary folder, read into one ``Volume`` per
sequence and turned into the model's slices by ``clinical.channels.assemble_study``; its slices
come from the FLAIR, and each slice's source names the object (and slice) it came from. A
folder holding none of these is rejected (``empty``); a DICOM study on a worker without the
DICOM reader (``pydicom``) is rejected as ``unsupported_format``. Every check that rejects a
study lives in the reader, so a rejected study is never half scored.

The first check is completeness: a study is read only when its folder holds its manifest
(``brain_tumor.store.manifests``) and matches it. A study without one, or with files missing,
extra or changed against it, is rejected with reason ``incomplete``; once ``submit`` (or
``brain-tumor studies seal``) writes the manifest, its newer arrival makes it due again.
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brain_tumor.ingest.imaging import SliceError, check_header, decode_image
from brain_tumor.ingest.naming import MAX_SLICE_NUMBER, slice_number
from brain_tumor.scoring.clinical.channels import SeriesRules, assemble_study
from brain_tumor.scoring.clinical.nifti import is_nifti_name, read_nifti_files
from brain_tumor.scoring.clinical.volume import Volume
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

    def read(self, study_id: str,
             objects: list[tuple[str, ObjectInfo]] | None = None) -> Study:
        """Read and check every slice; StudyRejected names the first problem and its files.

        Within ``limits``: the slice count and file sizes are checked from the listing before
        anything is read, each slice's pixels from its TIFF header before it is decoded, and
        the study's pixels in all before any slice past them is decoded. ``objects``: the
        study's listing once ``check_complete`` passed (else it is checked here).
        """
        if objects is None:
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
        return Study(study_id, images, indices, keys, meta={"format": "tiff"},
                     summary={"format": "tiff"})


def upload_study(incoming: IncomingStore, folder: Path, study_id: str | None = None,
                 io_workers: int = 8) -> tuple[str, int]:
    """Upload a local folder's slice TIFFs (masks left out), or else its NIfTI volumes
    (``.nii``, ``.nii.gz``), as ``incoming/<study_id>/``, then the study's manifest, which
    makes it complete.

    Slices already stored unchanged are not sent again, so a second call resumes an
    interrupted upload; a changed slice is sent again and the manifest rewritten (a study may
    be sent anew). Refused when the stored study holds files the folder does not. The study id
    defaults to the folder name; returns (study id, files in the study: slices or volumes).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"study folder not found: {folder}")
    sid = check_study_id(study_id or folder.name)
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_slice_name(p.name))
    content_type = "image/tiff"
    if not files:
        files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti_name(p.name))
        content_type = "application/octet-stream"
    if not files:
        raise ValueError(f"no slice TIFFs (<name>_<N>.tif) or NIfTI volumes (.nii, .nii.gz) "
                         f"in {folder}")
    for path in files:
        check_file_name(path.name)
    local = manifests.hash_files(folder, files, io_workers)
    counts = manifests.upload_folder(incoming.store, incoming.prefix(sid), "study", sid, local,
                                     workers=io_workers, replace=True, content_type=content_type)
    log.info("uploaded study %s: %d files to %s (%d sent, %d already there)", sid, len(files),
             incoming.prefix(sid), counts["sent"], counts["kept"])
    return sid, len(files)


#: DICOM files: by name, or by the ``DICM`` marker at byte 128 of a file with another name
DICOM_SUFFIXES = (".dcm", ".dicom", ".zip")
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
#: bytes a clinical study may download: this many per pixel the study may hold
CLINICAL_BYTES_PER_PIXEL = 8
#: files a clinical study may hold: this many per slice the study may have
CLINICAL_FILES_PER_SLICE = 4


def is_dicom_name(name: str) -> bool:
    """Whether a file name marks a DICOM instance or a zip of them."""
    return name.lower().endswith(DICOM_SUFFIXES)


def has_dicom_magic(data: bytes) -> bool:
    """Whether bytes hold the DICOM file marker (``DICM`` after the 128-byte preamble)."""
    return data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC


def study_format(names: list[str]) -> str | None:
    """``tiff``, ``nifti`` or ``dicom`` by a study's file names (first match in that order);
    None when no name says (files without a known suffix may still be DICOM)."""
    if any(is_slice_name(n.rsplit("/", 1)[-1]) for n in names):
        return "tiff"
    if any(is_nifti_name(n) for n in names):
        return "nifti"
    if any(is_dicom_name(n) for n in names):
        return "dicom"
    return None


def _head(path: Path, size: int) -> bytes:
    """The first size bytes of a file."""
    with path.open("rb") as fh:
        return fh.read(size)


def read_dicom(paths: list[Path], limits: StudyLimits) -> list[Volume]:
    """The DICOM reader's volumes; ``unsupported_format`` where it is not installed."""
    try:
        from brain_tumor.scoring.clinical.dicom import read_dicom_files
    except ImportError as exc:
        raise StudyRejected("unsupported_format", (
            f"a DICOM study, and this worker cannot read DICOM ({exc}); install the ml extra"
        )) from None
    return read_dicom_files(paths, limits)


class StudyFolderReader:
    """Reads a study folder by what it holds: slice TIFFs, NIfTI volumes or DICOM instances."""

    def __init__(self, incoming: IncomingStore, io_workers: int = 8,
                 expected_size: int | None = None, limits: StudyLimits | None = None,
                 rules: SeriesRules | None = None) -> None:
        self.tiff = TiffFolderReader(incoming, io_workers, expected_size, limits)
        self.incoming = incoming
        self.io_workers = io_workers
        self.limits = self.tiff.limits
        self.rules = rules or SeriesRules()

    def read(self, study_id: str) -> Study:
        """Check the study is complete, then read it in its format (see the module)."""
        objects = self.tiff.check_complete(study_id)
        fmt = study_format([rel for rel, _ in objects])
        if fmt == "tiff":
            return self.tiff.read(study_id, objects)
        if fmt == "nifti":
            objects = [(rel, obj) for rel, obj in objects if is_nifti_name(rel)]
        elif fmt == "dicom" or objects:
            fmt = "dicom"
        if not objects:
            raise StudyRejected("empty", f"no slice TIFFs, NIfTI volumes or DICOM files under "
                                         f"{self.incoming.prefix(study_id)}")
        return self._read_clinical(study_id, fmt, objects)

    def _check_listing(self, objects: list[tuple[str, ObjectInfo]]) -> None:
        """StudyRejected when the files to download are over the limits, before any is read:
        more than CLINICAL_FILES_PER_SLICE x ``study_slices`` files (``too_many_slices``), a
        file over ``file_bytes`` (a NIfTI volume or a zip: over the study's byte budget), or
        all of them over CLINICAL_BYTES_PER_PIXEL x ``study_pixels`` bytes (``too_large``)."""
        most = CLINICAL_FILES_PER_SLICE * self.limits.study_slices
        if len(objects) > most:
            raise StudyRejected("too_many_slices", (
                f"{len(objects)} files, the most accepted is {most} ({CLINICAL_FILES_PER_SLICE} "
                f"x max_study_slices); none was read"), [])

        def bound(key: str) -> int:
            whole = is_nifti_name(key) or key.lower().endswith(".zip")
            return self._study_bytes if whole else self.limits.file_bytes

        big = [obj for _, obj in objects if obj.size > bound(obj.key)]
        if big:
            raise StudyRejected("too_large", (
                f"{len(big)} file(s) over their limit ({self.limits.file_bytes:,} bytes, "
                f"max_file_bytes, for a slice file), e.g. {big[0].key} ({big[0].size:,} bytes); "
                f"none was read"), [o.key for o in big])
        total = sum(obj.size for _, obj in objects)
        if total > self._study_bytes:
            raise StudyRejected("too_large", (
                f"the study's {len(objects)} files hold {total:,} bytes, over the limit of "
                f"{self._study_bytes:,} ({CLINICAL_BYTES_PER_PIXEL} x max_study_pixels); "
                f"none was read"), [])

    @property
    def _study_bytes(self) -> int:
        return CLINICAL_BYTES_PER_PIXEL * self.limits.study_pixels

    def _download(self, objects: list[tuple[str, ObjectInfo]], folder: Path) -> list[Path]:
        """Every object written under folder at its relative path, in parallel."""
        def fetch(item: tuple[str, ObjectInfo]) -> Path:
            rel, obj = item
            path = folder.joinpath(*[p for p in rel.split("/") if p not in ("", ".", "..")])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.incoming.get(obj.key))
            return path

        with ThreadPoolExecutor(max_workers=self.io_workers) as pool:
            return list(pool.map(fetch, objects))

    def _read_clinical(self, study_id: str, fmt: str,
                       objects: list[tuple[str, ObjectInfo]]) -> Study:
        """Download, read into volumes, assemble; local paths in the result become keys."""
        self._check_listing(objects)
        prefix = self.incoming.prefix(study_id)
        with tempfile.TemporaryDirectory(prefix="study-") as tmp:
            folder = Path(tmp)
            paths = self._download(objects, folder)
            if fmt == "dicom":
                paths = [p for p in paths if is_dicom_name(p.name) or has_dicom_magic(
                    _head(p, DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)))]
                if not paths:
                    raise StudyRejected("empty", (
                        f"{len(objects)} file(s) under {prefix} and none is a slice TIFF, a "
                        f"NIfTI volume or a DICOM file"))

            def key_of(text: str) -> str:
                local = str(folder) + "/"
                return prefix + text[len(local):] if text.startswith(local) else text

            try:
                volumes = (read_nifti_files(paths, self.limits) if fmt == "nifti"
                           else read_dicom(paths, self.limits))
                study = assemble_study(study_id, volumes, self.rules, fmt)
            except StudyRejected as exc:
                raise StudyRejected(exc.reason, exc.detail.replace(str(folder) + "/", prefix),
                                    [key_of(f) for f in exc.files]) from None
        if len(study.images) > self.limits.study_slices:
            raise StudyRejected("too_many_slices", (
                f"{len(study.images)} slices once reformatted, the most accepted is "
                f"{self.limits.study_slices} (max_study_slices)"), [])
        study.source = [key_of(s) for s in study.source]
        return study


def study_reader(incoming: IncomingStore, settings: Settings) -> StudyFolderReader:
    """The reader for studies in ``incoming/``: by format, within the settings' limits."""
    return StudyFolderReader(incoming, settings.io_workers, settings.expected_slice_size,
                             rules=SeriesRules.from_settings(settings))
