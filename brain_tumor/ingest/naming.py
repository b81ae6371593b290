"""File names of the LGG `kaggle_3m` layout: ``<PATIENT>/<PATIENT>_<N>.tif`` and ``..._mask.tif``.

A folder is one study and its name, ``TCGA_<institution>_<patient>_<YYYYMMDD>`` (e.g.
``TCGA_CS_4941_19960909``), is the study id (the manifest keeps it in its ``patient_id`` column).
The patient is the study id without the date, ``TCGA_<institution>_<patient>`` (``patient_of``):
two studies of one person share it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

_FILE_RE = re.compile(  # matched against whole names (fullmatch), ASCII digits only
    r"(?P<patient>[A-Za-z0-9]+_(?P<institution>[A-Za-z0-9]+)_[A-Za-z0-9]+_(?P<date>[0-9]{8}))"
    r"_(?P<slice>[0-9]+)(?P<mask>_mask)?\.tiff?"
)
#: the largest slice number a name may carry (keys and int64 tables stay small)
MAX_SLICE_NUMBER = 99_999
#: files that may sit beside the patient folders and are not slices
IGNORED_SUFFIXES = (".csv", ".md", ".txt", ".json")
IGNORED_NAMES = (".DS_Store", "Thumbs.db")


_STUDY_RE = re.compile(r"(?P<patient>[A-Za-z0-9]+_[A-Za-z0-9]+_[A-Za-z0-9]+)_[0-9]{8}")


def patient_of(study_id: str) -> str:
    """The patient of a study: ``TCGA_CS_4941_19960909`` -> ``TCGA_CS_4941``.

    An id not of the form ``<prefix>_<institution>_<patient>_<YYYYMMDD>`` is its own patient.
    """
    match = _STUDY_RE.fullmatch(str(study_id))
    return match["patient"] if match else str(study_id)


class BadName(ValueError):
    """A .tif file whose path does not follow the layout."""


@dataclass(frozen=True)
class SliceName:
    """What a slice or mask file name says."""

    patient_id: str  # the study id (folder name); its patient is patient_of(patient_id)
    institution: str
    acquisition_date: str  # ISO date, YYYY-MM-DD
    slice_index: int
    is_mask: bool


def is_slice_file(path: str) -> bool:
    """Whether the path is meant as a slice or mask (a .tif/.tiff file)."""
    return PurePosixPath(path).suffix.lower() in (".tif", ".tiff")


def is_ignored(path: str) -> bool:
    """Whether the path is a known side file (data.csv, README, ...) and not a slice."""
    p = PurePosixPath(path)
    return (p.name in IGNORED_NAMES or p.suffix.lower() in IGNORED_SUFFIXES
            or p.name.startswith("._"))


def slice_number(digits: str) -> int | None:
    """The slice number written as ASCII digits, or None if it is over MAX_SLICE_NUMBER."""
    stripped = digits.lstrip("0") or "0"
    if len(stripped) > len(str(MAX_SLICE_NUMBER)) or int(stripped) > MAX_SLICE_NUMBER:
        return None
    return int(stripped)


def parse_slice_path(path: str) -> SliceName:
    """Parse ``.../<PATIENT>/<PATIENT>_<N>[_mask].tif``; raise BadName with the reason."""
    p = PurePosixPath(path)
    match = _FILE_RE.fullmatch(p.name)
    if match is None:
        raise BadName(f"name {p.name!r:.200} is not <PATIENT>_<N>.tif or <PATIENT>_<N>_mask.tif")
    patient = match["patient"]
    if p.parent.name != patient:
        raise BadName(f"file {p.name!r} lies in folder {p.parent.name!r:.200}, "
                      f"expected {patient!r}")
    number = slice_number(match["slice"])
    if number is None:
        raise BadName(f"slice number {match['slice']:.40} of {p.name!r:.200} is over "
                      f"{MAX_SLICE_NUMBER}")
    date = match["date"]
    return SliceName(
        patient_id=patient,
        institution=match["institution"],
        acquisition_date=f"{date[:4]}-{date[4:6]}-{date[6:]}",
        slice_index=number,
        is_mask=match["mask"] is not None,
    )
