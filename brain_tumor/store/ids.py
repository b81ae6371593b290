"""Ids that become parts of storage keys: one rule for export ids, study ids and model versions.

An id is 1 to 128 letters, digits, '.', '_' or '-', starts with a letter or digit and holds no
'..', so no id can name a key outside its prefix. A study id may also not take a name that the
score store uses for its own folders under ``scores/<model_version>/``.
"""

from __future__ import annotations

import re

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: folder names under ``scores/<model_version>/`` that belong to the score store, not to a study
RESERVED_STUDY_IDS = ("quarantine", "_done", "batches")


class InvalidId(ValueError):
    """A string that cannot be used as an id in a storage key."""


def is_key_id(value: object) -> bool:
    """Whether value can be an id inside a key (export id, model version, study id)."""
    return isinstance(value, str) and bool(_ID_RE.match(value)) and ".." not in value


def is_study_id(value: object) -> bool:
    """Whether value is a valid study id (a key id that is not a reserved folder name)."""
    return is_key_id(value) and value not in RESERVED_STUDY_IDS


def check_study_id(value: str) -> str:
    """value if it is a valid study id, else InvalidId saying what was received."""
    if not is_study_id(value):
        raise InvalidId(f"invalid study id {value!r:.80}: use 1-128 letters, digits, '.', '_', "
                        f"'-', starting with a letter or digit (not "
                        f"{', '.join(map(repr, RESERVED_STUDY_IDS))})")
    return value


def check_export_id(value: str) -> str:
    """value if it is a valid export id, else InvalidId saying what was received."""
    if not is_key_id(value):
        raise InvalidId(f"export id must be 1-128 letters, digits, '.', '_' or '-', starting "
                        f"with a letter or digit, received {value!r:.80}")
    return value


def check_model_version(value: str) -> str:
    """value if it can be a model version id, else InvalidId saying what was received."""
    if not is_key_id(value):
        raise InvalidId(f"not a model version id: {value!r:.80}")
    return value
