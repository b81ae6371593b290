"""Ids that become parts of storage keys: one rule for export ids, study ids and model versions.

An id is 1 to ``MAX_ID_LENGTH`` (128) letters, digits, '.', '_' or '-' (ASCII, so as many
bytes), starts with a letter or digit and holds no '..', so no id can name a key outside its
prefix. The whole string must match: a trailing newline or any other character makes it invalid.
A study id may also not take a name that the score store uses for its own folders under
``scores/<model_version>/``.

Key length: S3 keys are at most ``MAX_KEY_BYTES`` (1024) bytes. The settings refuse an
``s3_root`` plus prefix longer than ``MAX_PREFIX_BYTES`` (512). After its prefix a key holds at
most two ids and a name the pipeline chooses; the longest are

* ``<model_version>/<study_id>/overlays/<N>.png`` under ``scores/``, N at most 99999
  (``brain_tumor.ingest.naming.MAX_SLICE_NUMBER``): 128 + 1 + 128 + 1 + 18 = 276 bytes;
* ``<study_id>/<file name>`` under ``incoming/``, a slice file name at most ``MAX_NAME_BYTES``
  (255, a file system's limit, checked by ``submit``): 128 + 1 + 255 = 384 bytes,

so every key built from ids is at most 512 + 384 = 896 bytes: a valid id never makes a key too
long, and no write fails half-way through a study for it. Export files keep the relative paths
they have inside their export and are not covered by this bound.
"""

from __future__ import annotations

import hashlib
import re

MAX_ID_LENGTH = 128
#: S3's limit on a key (UTF-8 bytes)
MAX_KEY_BYTES = 1024
#: limit on ``s3_root`` + any prefix, leaving room for ids and names
MAX_PREFIX_BYTES = 512
#: limit on a file name inside a study folder (UTF-8 bytes)
MAX_NAME_BYTES = 255
#: prefix of a study id derived from a DICOM Study Instance UID
DICOM_STUDY_PREFIX = "dcm-"
_ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_ID_LENGTH - 1}}}")
#: folder names under ``scores/<model_version>/`` that belong to the score store, not to a study
RESERVED_STUDY_IDS = ("quarantine", "_done", "batches")
_RULE = (f"1-{MAX_ID_LENGTH} letters, digits, '.', '_' or '-', starting with a letter or digit, "
         f"no '..'")


class InvalidId(ValueError):
    """A string that cannot be used as an id in a storage key."""


def is_key_id(value: object) -> bool:
    """Whether value can be an id inside a key (export id, model version, study id)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None and ".." not in value


def is_study_id(value: object) -> bool:
    """Whether value is a valid study id (a key id that is not a reserved folder name)."""
    return is_key_id(value) and value not in RESERVED_STUDY_IDS


def _received(value: object) -> str:
    """How an invalid id is quoted in a message: its start, and its length when long."""
    if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
        return f"{value!r:.60}... ({len(value)} characters)"
    return f"{value!r:.80}"


def check_study_id(value: str) -> str:
    """value if it is a valid study id, else InvalidId saying what was received."""
    if not is_study_id(value):
        raise InvalidId(f"invalid study id {_received(value)}: use {_RULE} (not "
                        f"{', '.join(map(repr, RESERVED_STUDY_IDS))})")
    return value


def check_export_id(value: str) -> str:
    """value if it is a valid export id, else InvalidId saying what was received."""
    if not is_key_id(value):
        raise InvalidId(f"invalid export id {_received(value)}: use {_RULE}")
    return value


def check_model_version(value: str) -> str:
    """value if it can be a model version id, else InvalidId saying what was received."""
    if not is_key_id(value):
        raise InvalidId(f"invalid model version id {_received(value)}: use {_RULE}")
    return value


def study_id_from_uid(study_uid: str) -> str:
    """The study id of a DICOM study: ``dcm-`` and the first 16 hex digits of the sha256 of its
    Study Instance UID, so the id is stable and says nothing of the patient or the UID."""
    uid = study_uid.strip().rstrip("\x00").strip()
    if not uid:
        raise InvalidId("a DICOM study needs a Study Instance UID to derive its id, received "
                        "an empty one")
    return DICOM_STUDY_PREFIX + hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:16]
