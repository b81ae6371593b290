"""Model versions in S3: ``models/<model_version>/``, published whole or not at all.

A model version's files (``classifier.keras``, ``segmenter.keras``, ``config.json``, histories)
are uploaded first and ``model.json`` last; a folder without ``model.json`` is an unfinished
upload and is ignored. Evaluations are written once per (model, dataset) pair.
"""

from __future__ import annotations

import logging
from pathlib import Path

from brain_tumor.settings import Settings
from brain_tumor.store.ids import check_model_version
from brain_tumor.store.schemas import validate_record
from brain_tumor.store.storage import KeyNotFound, ObjectStore, StorageError

log = logging.getLogger(__name__)

MODEL_FILES = ("classifier.keras", "segmenter.keras")


class ModelNotFound(StorageError):
    """No such (complete) model version."""


class ModelStore:
    """Publishes, lists and fetches model versions."""

    def __init__(self, store: ObjectStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def key(self, version: str, *parts: str) -> str:
        """Key of one object of a model version (the version checked against the id rule)."""
        return self.settings.key("models", check_model_version(version), *parts)

    def exists(self, version: str) -> bool:
        """Whether the version was published completely."""
        return self.store.exists(self.key(version, "model.json"))

    def record(self, version: str) -> dict:
        """The version's model.json."""
        try:
            return validate_record("model", self.store.get_json(self.key(version, "model.json")))
        except KeyNotFound as exc:
            raise ModelNotFound(f"model version {version!r} does not exist (no "
                                f"{self.key(version, 'model.json')})") from exc

    def versions(self) -> list[str]:
        """Every published model version, oldest first (by creation time)."""
        prefix = self.settings.key("models")
        found = []
        for folder in self.store.list_dirs(prefix):
            version = folder[len(prefix):].rstrip("/")
            if self.exists(version):
                found.append((self.record(version)["created_at"], version))
        return [v for _, v in sorted(found)]

    def publish(self, version: str, local_dir: Path, record: dict) -> bool:
        """Upload every file of local_dir, then model.json; False if the version exists."""
        if self.exists(version):
            return False
        validate_record("model", record)
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            if path.name == "model.json":
                continue
            self.store.upload_file(path, self.key(version, path.relative_to(local_dir).as_posix()))
        self.store.put_json(self.key(version, "model.json"), record, new=True)
        log.info("published model version %s", version)
        return True

    def fetch(self, version: str) -> Path:
        """Download the version's model files into the local cache; return the folder."""
        if not self.exists(version):
            raise ModelNotFound(f"model version {version!r} does not exist (no "
                                f"{self.key(version, 'model.json')})")
        folder = self.settings.home_dir / "models" / version
        folder.mkdir(parents=True, exist_ok=True)
        for name in MODEL_FILES:
            target = folder / name
            if not target.exists():
                partial = folder / f".{name}.partial"
                self.store.download_file(self.key(version, name), partial)
                partial.replace(target)
        return folder

    # --- evaluations ---
    def evaluation_key(self, version: str, dataset_version: str, name: str) -> str:
        """Key of an evaluation object of a model on a dataset version's test patients."""
        return self.key(version, "evaluations", dataset_version, name)

    def evaluation(self, version: str, dataset_version: str) -> dict | None:
        """The stored metrics of a model on a dataset version, or None."""
        try:
            return validate_record("metrics", self.store.get_json(
                self.evaluation_key(version, dataset_version, "metrics.json")))
        except KeyNotFound:
            return None

