"""Submitting a DICOM study: a local folder or zip of one study's instances uploaded to
``incoming/<study_id>/``, its manifest last.

Each DICOM object is stored as ``<SOP Instance UID>.dcm`` (one flat folder), whatever its local
name or path (hospital exports often name folders after the patient); files that are not DICOM
are left out. The study id is derived from the Study Instance UID
(``brain_tumor.store.ids.study_id_from_uid``) unless one is given, so nothing identifying ends
up in a key, a log line or a message.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import zipfile
from pathlib import Path

from brain_tumor.scoring.clinical.dicom import read_header, staged_files
from brain_tumor.scoring.contracts import StudyRejected
from brain_tumor.scoring.readers import StudyLimits, is_slice_name
from brain_tumor.store import manifests
from brain_tumor.store.ids import check_study_id, study_id_from_uid
from brain_tumor.store.incoming import IncomingStore

log = logging.getLogger(__name__)

DICOM_SUFFIX = ".dcm"
#: a DICOM UID: digits and dots, at most 64 characters
_UID_RE = re.compile(r"[0-9][0-9.]{0,63}")
_PREAMBLE = 128


def is_dicom_file(path: Path) -> bool:
    """Whether a local file starts like a DICOM file (``DICM`` after its 128-byte preamble)."""
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(_PREAMBLE + 4)
    except OSError:
        return False
    return head[_PREAMBLE:] == b"DICM"


def is_dicom_source(path: Path) -> bool:
    """Whether a local path is a DICOM study to submit: a zip, or a folder holding DICOM files
    (and no slice TIFFs)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".zip" and zipfile.is_zipfile(path)
    if not path.is_dir() or any(is_slice_name(p.name) for p in path.iterdir()):
        return False
    return any(p.is_file() and is_dicom_file(p) for p in path.rglob("*"))


def _local_files(path: Path) -> list[Path]:
    """The files of a local study: a zip itself, or every regular file under a folder."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"DICOM study not found: {path}")
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _object_name(sop_uid: str, sha256: str) -> str:
    """The stored name of an instance: its SOP Instance UID, or its digest without a valid one."""
    uid = sop_uid.strip().rstrip("\x00")
    return (uid if _UID_RE.fullmatch(uid) else sha256[:32]) + DICOM_SUFFIX


def upload_dicom_study(incoming: IncomingStore, path: Path, study_id: str | None = None,
                       io_workers: int = 8, limits: StudyLimits | None = None
                       ) -> tuple[str, int]:
    """Upload a local DICOM folder or zip as ``incoming/<study_id>/<SOP Instance UID>.dcm``
    objects, then the manifest; returns (study id, DICOM objects uploaded).

    ValueError for a source that holds no DICOM object, a file cut short, more than one study
    (Study Instance UID), or two different objects with one SOP Instance UID. A second call
    resumes an interrupted upload, as for a TIFF study.
    """
    path = Path(path)
    limits = limits or StudyLimits.from_settings(incoming.settings)
    with staged_files(_local_files(path), limits) as files:
        headers = []
        left_out: list[str] = []
        for name, local in files:
            try:
                headers.append((name, local, read_header(name, local)))
            except StudyRejected as exc:
                if exc.reason != "not_dicom":
                    raise ValueError(f"DICOM study {path.name}: {exc}") from None
                left_out.append(name)
        if left_out:
            log.info("DICOM study %s: %d file(s) that are not DICOM left out, e.g. %r",
                     path.name, len(left_out), left_out[0])
        if not headers:
            raise ValueError(f"no DICOM files in {path}")
        studies = {str(ds.get("StudyInstanceUID", "")) for _, _, ds in headers}
        if len(studies) != 1 or "" in studies:
            raise ValueError(f"{path.name} holds objects of {len(studies)} studies (Study "
                             f"Instance UID missing or differing): submit one study at a time")
        sid = check_study_id(study_id or study_id_from_uid(studies.pop()))
        hashed = manifests.hash_files(Path("/"),
                                      [local.resolve() for _, local, _ in headers], io_workers)
        chosen: dict[str, manifests.LocalFile] = {}
        for (name, _, ds), local in zip(headers, hashed, strict=True):
            stored = _object_name(str(ds.get("SOPInstanceUID", "")), local.sha256)
            same = chosen.get(stored)
            if same is not None and same.sha256 != local.sha256:
                raise ValueError(f"{path.name}: two different objects share a SOP Instance UID "
                                 f"(e.g. {name}); a study's instances must be unique")
            chosen[stored] = dataclasses.replace(local, path=stored)
        counts = manifests.upload_folder(incoming.store, incoming.prefix(sid), "study", sid,
                                         list(chosen.values()), workers=io_workers,
                                         replace=True, content_type="application/dicom")
    log.info("uploaded DICOM study %s: %d object(s) to %s (%d sent, %d already there)", sid,
             len(chosen), incoming.prefix(sid), counts["sent"], counts["kept"])
    return sid, len(chosen)

