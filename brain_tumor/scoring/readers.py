"""Study readers: stored studies in, ``Study`` out (the first seam of scoring).

``TiffFolderReader`` reads the layout the project started with: ``incoming/<study_id>/`` holding
one patient's slice TIFFs named ``<anything>_<N>.tif`` (at most one folder deep; masks and other
files ignored), 8-bit, three channels in the ``kaggle_3m`` order. Every check that rejects a
study lives in the reader, so a rejected study is never half scored.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from brain_tumor.ingest.imaging import SliceError, decode_image
from brain_tumor.ingest.naming import MAX_SLICE_NUMBER, slice_number
from brain_tumor.scoring.contracts import Study, StudyRejected
from brain_tumor.store.ids import MAX_NAME_BYTES, check_study_id
from brain_tumor.store.incoming import IncomingStore

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


def check_slices(keys: list[str], decoded: list[np.ndarray | SliceError],
                 expected_size: int | None) -> tuple[str, str, list[str]] | None:
    """(reason, detail, bad keys) for the first problem of a study, or None if it is usable."""
    bad = [(k, d) for k, d in zip(keys, decoded, strict=True) if isinstance(d, SliceError)]
    if bad:
        key, err = bad[0]
        detail = f"{len(bad)} of {len(keys)} slice(s) unusable; {key}: {err.detail}"
        return err.reason, detail, [k for k, _ in bad]
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
    """Reads ``incoming/<study_id>/`` folders of 8-bit RGB slice TIFFs."""

    def __init__(self, incoming: IncomingStore, io_workers: int = 8,
                 expected_size: int | None = None) -> None:
        self.incoming = incoming
        self.io_workers = io_workers
        self.expected_size = expected_size

    def slice_keys(self, study_id: str) -> list[tuple[int, str]]:
        """(slice number, key) of the study's slice TIFFs, sorted; other objects ignored.

        A slice number over ``MAX_SLICE_NUMBER`` rejects the study (``bad_name``).
        """
        found: list[tuple[int, str]] = []
        too_big: list[str] = []
        for rel, obj in self.incoming.objects(study_id):
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

    def _decode_all(self, keys: list[str]) -> list[np.ndarray | SliceError]:
        """Read (once each) and decode every slice in parallel; a SliceError for a bad one."""
        def load(key: str) -> np.ndarray | SliceError:
            try:
                return decode_image(self.incoming.get(key))
            except SliceError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=self.io_workers) as pool:
            return list(pool.map(load, keys))

    def read(self, study_id: str) -> Study:
        """Read and check every slice; StudyRejected names the first problem and its files."""
        found = self.slice_keys(study_id)
        if not found:
            raise StudyRejected("empty", f"no slice TIFFs under {self.incoming.prefix(study_id)}")
        dupes = sorted({n for n, c in Counter(n for n, _ in found).items() if c > 1})
        if dupes:
            raise StudyRejected("duplicate", f"slice number(s) {dupes} appear more than once",
                                [k for n, k in found if n in dupes])
        indices, keys = [n for n, _ in found], [k for _, k in found]
        decoded = self._decode_all(keys)
        problem = check_slices(keys, decoded, self.expected_size)
        if problem is not None:
            raise StudyRejected(*problem)
        images: list[np.ndarray] = decoded  # type: ignore[assignment]
        return Study(study_id, images, indices, keys, meta={"format": "tiff"})


def upload_study(incoming: IncomingStore, folder: Path, study_id: str | None = None,
                 io_workers: int = 8) -> tuple[str, int]:
    """Upload a local folder's slice TIFFs (masks left out) as ``incoming/<study_id>/``.

    The study id defaults to the folder name; returns (study id, files uploaded).
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

    def put(path: Path) -> None:
        incoming.put(sid, path.name, path.read_bytes(), content_type="image/tiff")

    with ThreadPoolExecutor(max_workers=io_workers) as pool:
        list(pool.map(put, files))
    log.info("uploaded study %s: %d slices to %s", sid, len(files), incoming.prefix(sid))
    return sid, len(files)
