"""The score store: every key under ``scores/`` is built here and nowhere else.

Layout (see docs/schemas.md for the records)::

    scores/<model_version>/<study_id>/<name>           a study's outputs (slices.parquet, ...)
    scores/<model_version>/_done/<study_id>.json       done marker, written last
    scores/<model_version>/quarantine/<study_id>.json  why a study could not be scored
    scores/batches/<run_id>.json                       one summary per scoring run

A study's result exists once its done marker does: the outputs are written first, the marker
last with ``If-None-Match: *``, so a crash leaves nothing visible and a re-run writes the same
keys. The markers of a model version sit in one flat folder, so one listing tells which studies
it has scored.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from brain_tumor.settings import Settings
from brain_tumor.store.ids import check_model_version, check_study_id, is_key_id, is_study_id
from brain_tumor.store.schemas import SchemaError, validate_record
from brain_tumor.store.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

DONE_DIR = "_done"
QUARANTINE_DIR = "quarantine"
BATCHES_DIR = "batches"
SUMMARY = "summary.json"
_OVERLAY_RE = re.compile(r"(\d+)\.png")


@dataclass(frozen=True)
class ScoredStudy:
    """A done marker found in a listing."""

    study_id: str
    model_version: str
    at: datetime | None


class ScoreStore:
    """Reads and writes the scoring results of every model version."""

    def __init__(self, store: ObjectStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    # --- keys ---
    def output_key(self, model_version: str, study_id: str, name: str) -> str:
        """``scores/<model_version>/<study_id>/<name>``."""
        return self.settings.key("scores", check_model_version(model_version),
                                 check_study_id(study_id), name)

    def done_key(self, model_version: str, study_id: str) -> str:
        """``scores/<model_version>/_done/<study_id>.json``."""
        return self.settings.key("scores", check_model_version(model_version), DONE_DIR,
                                 f"{check_study_id(study_id)}.json")

    def quarantine_key(self, model_version: str, study_id: str) -> str:
        """``scores/<model_version>/quarantine/<study_id>.json``."""
        return self.settings.key("scores", check_model_version(model_version), QUARANTINE_DIR,
                                 f"{check_study_id(study_id)}.json")

    def batch_key(self, run_id: str) -> str:
        """``scores/batches/<run_id>.json``, the run id made key-safe."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in run_id)
        return self.settings.key("scores", BATCHES_DIR, f"{safe}.json")

    def _folder(self, *parts: str) -> str:
        """``scores/<parts>/``: the prefix of a folder (``scores/`` itself without parts)."""
        key = self.settings.key("scores", *parts)
        return key if key.endswith("/") else key + "/"

    # --- study results ---
    def is_done(self, model_version: str, study_id: str) -> bool:
        """Whether the study has a complete result for this model version."""
        return self.store.exists(self.done_key(model_version, study_id))

    def summary(self, model_version: str, study_id: str) -> dict[str, Any]:
        """The stored summary of a study (no done check: see ``result``)."""
        return validate_record("study_summary",
                               self.store.get_json(self.output_key(model_version, study_id,
                                                                   SUMMARY)))

    def result(self, model_version: str, study_id: str) -> dict[str, Any] | None:
        """The study's summary if it is done, else None."""
        if not self.is_done(model_version, study_id):
            return None
        return self.summary(model_version, study_id)

    def put_output(self, model_version: str, study_id: str, name: str, data: bytes,
                   content_type: str | None = None) -> str:
        """Write one output object of a study; returns its key."""
        key = self.output_key(model_version, study_id, name)
        self.store.put(key, data, content_type=content_type)
        return key

    def put_table(self, model_version: str, study_id: str, name: str, table: pd.DataFrame) -> str:
        """Write one Parquet output of a study; returns its key."""
        key = self.output_key(model_version, study_id, name)
        self.store.put_parquet(key, table)
        return key

    def commit(self, model_version: str, study_id: str, summary: dict[str, Any],
               marker: dict[str, Any]) -> bool:
        """Write the summary, then the done marker (last), then drop an old quarantine record.

        Returns False if the marker existed already (the study was scored concurrently).
        """
        self.store.put_json(self.output_key(model_version, study_id, SUMMARY),
                            validate_record("study_summary", summary))
        written = self.store.put_json(self.done_key(model_version, study_id), marker, new=True)
        self.store.delete(self.quarantine_key(model_version, study_id))  # a fixed re-upload
        return written

    def output_names(self, model_version: str, study_id: str) -> list[str]:
        """Names of every output object of a study (relative to its folder)."""
        folder = self.output_key(model_version, study_id, "") + "/"
        return sorted(o.key[len(folder):] for o in self.store.list(folder))

    def get_output(self, model_version: str, study_id: str, name: str) -> bytes:
        """One output object of a study."""
        return self.store.get(self.output_key(model_version, study_id, name))

    def overlay_slices(self, model_version: str, study_id: str) -> list[int]:
        """Slice numbers that have an overlay picture, ascending."""
        prefix = self.output_key(model_version, study_id, "overlays") + "/"
        return sorted(int(m.group(1)) for o in self.store.list(prefix)
                      if (m := _OVERLAY_RE.fullmatch(o.key[len(prefix):])))

    # --- quarantine ---
    def quarantine(self, model_version: str, study_id: str, record: dict[str, Any]) -> str:
        """Store why a study could not be scored; returns the key."""
        key = self.quarantine_key(model_version, study_id)
        self.store.put_json(key, validate_record("study_quarantine", record))
        return key

    def quarantine_record(self, model_version: str, study_id: str) -> dict[str, Any] | None:
        """A study's quarantine record, or None."""
        key = self.quarantine_key(model_version, study_id)
        return self.store.get_json(key) if self.store.exists(key) else None

    def quarantine_records(self, model_version: str) -> list[dict[str, Any]]:
        """Every quarantine record of a model version (unreadable ones logged and left out)."""
        records = []
        for info in self.store.list(self._folder(check_model_version(model_version),
                                                 QUARANTINE_DIR)):
            try:
                records.append(self.store.get_json(info.key))
            except StorageError as exc:
                log.warning("unreadable quarantine record %s: %s", info.key, exc)
        return records

    # --- listings ---
    def _listed(self, prefix: str) -> dict[str, datetime]:
        """``<prefix><study>.json`` objects as study id -> last modified."""
        found = {}
        for obj in self.store.list(prefix):
            name = obj.key[len(prefix):]
            sid = name[:-5]
            if name.endswith(".json") and "/" not in name and is_study_id(sid) \
                    and obj.last_modified is not None:
                found[sid] = obj.last_modified
        return found

    def done_ids(self, model_version: str) -> dict[str, datetime]:
        """Studies the model version has scored -> when (one listing per 1,000 studies)."""
        return self._listed(self._folder(check_model_version(model_version), DONE_DIR))

    def quarantined_ids(self, model_version: str) -> dict[str, datetime]:
        """Studies the model version quarantined -> when."""
        return self._listed(self._folder(check_model_version(model_version), QUARANTINE_DIR))

    def model_versions(self) -> list[str]:
        """Model versions that have a folder under ``scores/``."""
        root = self._folder()
        names = (folder[len(root):].rstrip("/") for folder in self.store.list_dirs(root))
        return sorted(n for n in names if n != BATCHES_DIR and is_key_id(n))

    def scored(self, limit: int) -> list[ScoredStudy]:
        """The most recently scored studies of every model version, newest first."""
        found = [ScoredStudy(sid, version, at)
                 for version in self.model_versions()
                 for sid, at in self.done_ids(version).items()]
        return sorted(found, key=lambda s: (s.at is not None, s.at), reverse=True)[:limit]

    # --- batch summaries ---
    def write_batch(self, summary: dict[str, Any]) -> str:
        """Store a batch summary (a retried run overwrites its own); returns the key."""
        key = self.batch_key(validate_record("batch_summary", summary)["run_id"])
        self.store.put_json(key, summary)
        return key

    def batch(self, run_id: str) -> dict[str, Any]:
        """The batch summary of one run."""
        return validate_record("batch_summary", self.store.get_json(self.batch_key(run_id)))

    def batches(self, limit: int) -> list[dict[str, Any]]:
        """The newest batch summaries (by when they were written), newest first; unreadable
        ones are logged and left out."""
        objs = sorted((o for o in self.store.list(self._folder(BATCHES_DIR))
                       if o.key.endswith(".json")),
                      key=lambda o: (o.last_modified is not None, o.last_modified, o.key),
                      reverse=True)[:limit]
        found = []
        for obj in objs:
            try:
                found.append(validate_record("batch_summary", self.store.get_json(obj.key)))
            except (SchemaError, StorageError) as exc:
                log.warning("unreadable batch summary %s: %s", obj.key, exc)
        return found
