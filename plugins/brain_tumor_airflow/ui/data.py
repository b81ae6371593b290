"""What the ops pages show, read from the objects the pipeline writes (registry, models, datasets,
scores). Nothing here writes: the registry and S3 stay the only source of truth.

Ids that come from a URL are checked here (``check_model_version``, ``check_study_id``, ...)
before any key is built from them, so a request cannot name a key outside the project's prefixes.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from brain_tumor.evaluation import catalog
from brain_tumor.settings import Settings
from brain_tumor.store import ids
from brain_tumor.store.datasets import DatasetStore
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.registry import Registry
from brain_tumor.store.schemas import SchemaError, validate_record
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import KeyNotFound, ObjectStore, StorageError

log = logging.getLogger(__name__)

#: headline metrics shown per model version (the catalog's ``on_page`` entries)
HEADLINE = catalog.ON_PAGE
_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.png")  # matched whole (fullmatch)
_OUTPUT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # an output's name, no folder
RECENT_BATCHES = 50
RECENT_STUDIES = 100
#: a scored study's clinical outputs: summary.json field (naming the file) -> media type
CLINICAL_FILES = {"dicom_seg": "application/dicom", "nifti_mask": "application/gzip"}


class NotFound(LookupError):
    """The thing a URL names does not exist (or its name is not allowed)."""


def check_model_version(value: str) -> str:
    """value if it can be a model version id (``brain_tumor.store.ids``' rule), else NotFound."""
    if not ids.is_key_id(value):
        raise NotFound(f"not a model version id: {value!r:.80}")
    return value


def check_study_id(value: str) -> str:
    """value if it is a valid study id (``brain_tumor.store.ids``' rule), else NotFound."""
    if not ids.is_study_id(value):
        raise NotFound(f"not a study id: {value!r:.80}")
    return value


def check_png_name(value: str) -> str:
    """value if it is a plain PNG file name (no folders, no leading dot)."""
    if not isinstance(value, str) or not _FILE_RE.fullmatch(value) or ".." in value:
        raise NotFound(f"not a picture name: {value!r:.80}")
    return value


def headline(metrics: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """name -> {value, interval} of the headline metrics of a metrics.json (empty if None)."""
    if not metrics:
        return {}
    intervals = metrics.get("intervals") or {}
    return {m.name: {"value": m.value(metrics), "interval": intervals.get(m.name)}
            for m in HEADLINE}


@dataclass
class OpsData:
    """Read-only views of the pipeline's objects for the pages."""

    store: ObjectStore
    settings: Settings

    @property
    def models(self) -> ModelStore:
        return ModelStore(self.store, self.settings)

    @property
    def scores(self) -> ScoreStore:
        return ScoreStore(self.store, self.settings)

    # --- models and registry ---
    def registry(self) -> dict[str, Any]:
        """The champion, its stack and every registry event (newest first)."""
        registry = Registry(self.store, self.settings)
        stack = registry.champion_history()
        events = registry.events()  # a listing: event records are cached by the registry
        return {"champion": stack[-1] if stack else None, "history": stack,
                "events": list(reversed(events))}

    def model_versions(self) -> list[dict[str, Any]]:
        """Every model version (newest first): model.json, headline metrics, plots, card."""
        out = []
        for version in reversed(self.models.versions()):
            record = self.models.record(version)
            out.append({"model": record, "metrics": headline(self.metrics(version)),
                        "plots": self.plots(version),
                        "has_card": self.store.exists(self.models.key(version, "model_card.md"))})
        return out

    def metrics(self, version: str) -> dict[str, Any] | None:
        """The model's metrics.json on its own test patients, or None if not evaluated yet."""
        try:
            return validate_record("metrics", self.store.get_json(
                self.models.key(check_model_version(version), "metrics.json")))
        except KeyNotFound:
            return None

    def plots(self, version: str) -> list[str]:
        """File names of the model's evaluation plots."""
        prefix = self.models.key(check_model_version(version), "plots") + "/"
        return [info.key[len(prefix):] for info in self.store.list(prefix)
                if _FILE_RE.fullmatch(info.key[len(prefix):])]

    def model_card(self, version: str) -> str:
        """The model card's Markdown."""
        self._known_model(version)
        try:
            return self.store.get(self.models.key(version, "model_card.md")).decode("utf-8")
        except KeyNotFound as exc:
            raise NotFound(f"model version {version} has no model card yet") from exc

    def plot(self, version: str, name: str) -> bytes:
        """The PNG bytes of one evaluation plot."""
        self._known_model(version)
        return self._get(self.models.key(version, "plots", check_png_name(name)))

    def _known_model(self, version: str) -> None:
        if not self.models.exists(check_model_version(version)):
            raise NotFound(f"no model version {version!r}")

    def _get(self, key: str) -> bytes:
        try:
            return self.store.get(key)
        except KeyNotFound as exc:
            raise NotFound(f"no object {key}") from exc

    # --- gate ---
    def gate_results(self) -> list[dict[str, Any]]:
        """Every gate result of every candidate, newest model first."""
        results = []
        for version in reversed(self.models.versions()):
            prefix = self.models.key(version, "gate") + "/"
            for info in self.store.list(prefix):
                name = info.key[len(prefix):]
                if "/" in name or not name.endswith(".json"):
                    continue
                try:
                    record = validate_record("gate_result", self.store.get_json(info.key))
                except (SchemaError, StorageError) as exc:
                    log.warning("unreadable gate result %s: %s", info.key, exc)
                    continue
                results.append({**record, "dataset_version": name[:-5],
                                "at": info.last_modified})
        return results

    # --- datasets ---
    def dataset_versions(self) -> list[dict[str, Any]]:
        """Every committed dataset version's dataset.json, oldest first."""
        datasets = DatasetStore(self.store, self.settings)
        root = self.settings.key("datasets")  # ends with "/"
        found = []
        for folder in self.store.list_dirs(root):
            version = folder[len(root):].rstrip("/")
            if datasets.exists(version):
                found.append(datasets.record(version))
        return sorted(found, key=lambda r: r["created_at"])

    # --- scoring ---
    def batches(self, limit: int = RECENT_BATCHES) -> list[dict[str, Any]]:
        """The most recent scoring batch summaries, newest start first."""
        return sorted(self.scores.batches(limit), key=lambda b: b.get("started_at") or "",
                      reverse=True)

    def scored_studies(self, limit: int = RECENT_STUDIES) -> list[dict[str, Any]]:
        """The most recently scored studies of every model version: study id, model, when, and
        the clinical outputs its summary lists (``CLINICAL_FILES``' fields, None without)."""
        recent = self.scores.scored(limit)

        def outputs(study: Any) -> dict[str, Any]:
            try:
                summary = self.scores.result(study.model_version, study.study_id) or {}
            except (StorageError, SchemaError, ValueError) as exc:
                log.warning("summary of %s (%s) unreadable: %s", study.study_id,
                            study.model_version, exc)
                summary = {}
            return {field: summary.get(field) for field in CLINICAL_FILES}

        with ThreadPoolExecutor(max_workers=self.settings.io_workers) as pool:
            found = list(pool.map(outputs, recent))
        return [{"study_id": s.study_id, "model_version": s.model_version, "at": s.at, **out}
                for s, out in zip(recent, found, strict=True)]

    def quarantined_studies(self, version: str) -> list[dict[str, Any]]:
        """The quarantine records of a model version's scoring."""
        return self.scores.quarantine_records(check_model_version(version))

    def study(self, version: str, study_id: str) -> dict[str, Any]:
        """A scored study: its summary and the slice numbers that have overlays."""
        self._known_model(version), check_study_id(study_id)
        summary = self.scores.result(version, study_id)
        if summary is None:
            raise NotFound(f"study {study_id} has no result from model version {version}")
        return {"summary": summary, "overlays": self.scores.overlay_slices(version, study_id)}

    def study_file(self, version: str, study_id: str, field: str) -> tuple[bytes, str, str]:
        """(bytes, file name, media type) of a clinical output a study's summary lists."""
        self._known_model(version), check_study_id(study_id)
        if field not in CLINICAL_FILES:
            raise NotFound(f"not a clinical output: {field!r:.80}")
        summary = self.scores.result(version, study_id)
        name = None if summary is None else summary.get(field)
        if not isinstance(name, str) or not _OUTPUT_RE.fullmatch(name):
            raise NotFound(f"study {study_id} has no {field} from model version {version}")
        try:
            return self.scores.get_output(version, study_id, name), name, CLINICAL_FILES[field]
        except KeyNotFound as exc:
            raise NotFound(f"no {name} of study {study_id}") from exc

    def study_picture(self, version: str, study_id: str, name: str) -> bytes:
        """overview.png or overlays/<n>.png of a scored study."""
        self._known_model(version), check_study_id(study_id)
        if name != "overview.png" and not re.fullmatch(r"overlays/\d{1,6}\.png", name):
            raise NotFound(f"not a study picture: {name!r:.80}")
        try:
            return self.scores.get_output(version, study_id, name)
        except KeyNotFound as exc:
            raise NotFound(f"no picture {name} of study {study_id}") from exc
