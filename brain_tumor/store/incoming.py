"""The incoming store: studies waiting to be scored, under ``incoming/<study_id>/``.

A study is complete once its folder holds its manifest (``incoming/<study_id>/_manifest.json``,
``brain_tumor.store.manifests``), written last by ``submit`` or ``brain-tumor studies seal``. The
listings planning uses (``study_ids``, ``arrivals``) hold complete studies only; ``incomplete``
lists the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from brain_tumor.settings import Settings
from brain_tumor.store import manifests
from brain_tumor.store.ids import check_study_id, is_study_id
from brain_tumor.store.storage import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)


class IncomingStore:
    """Lists and writes the objects of incoming studies; knows nothing of their format."""

    def __init__(self, store: ObjectStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def prefix(self, study_id: str) -> str:
        """The key prefix holding a study's objects: ``incoming/<study_id>/``."""
        return self.settings.key("incoming", check_study_id(study_id)) + "/"

    def states(self) -> dict[str, manifests.FolderState]:
        """Study id -> state of its folder (one listing of ``incoming/``); invalid names logged."""
        root = self.settings.key("incoming")
        states = manifests.folder_states(self.store.list(root), root)
        for name in sorted(n for n in states if not is_study_id(n)):
            log.warning("skipping incoming folder with an invalid study id: %r", name)
        return {n: s for n, s in states.items() if is_study_id(n)}

    def study_ids(self) -> list[str]:
        """Sorted ids of the complete studies (folders holding their manifest)."""
        return sorted(n for n, s in self.states().items() if s.sealed)

    def arrivals(self) -> dict[str, datetime]:
        """Complete study id -> newest upload time of its objects (its manifest's, as a rule)."""
        return {n: s.newest for n, s in self.states().items()
                if s.sealed and s.newest is not None}

    def incomplete(self) -> dict[str, manifests.FolderState]:
        """Study folders without a manifest: a submit running or killed, a copy not sealed."""
        return {n: s for n, s in self.states().items() if not s.sealed}

    def manifest(self, study_id: str) -> dict[str, Any] | None:
        """The study's manifest, None without one; ManifestError if it cannot be read."""
        return manifests.read_manifest(self.store, self.prefix(study_id))

    def differences(self, study_id: str, record: dict[str, Any],
                    objects: dict[str, ObjectInfo] | None = None) -> manifests.Differences:
        """How the stored study differs from its manifest (missing, extra, changed files)."""
        return manifests.differences(self.store, self.prefix(study_id), record, objects)

    def seal(self, study_id: str) -> tuple[dict[str, Any], bool]:
        """Write the manifest of a study folder copied by another tool; (manifest, written).

        A study that differs from an earlier manifest is sealed again (a study may be sent anew).
        """
        return manifests.seal_folder(self.store, self.prefix(study_id), "study", study_id,
                                     self.settings.io_workers, replace=True)

    def objects(self, study_id: str) -> Iterator[tuple[str, ObjectInfo]]:
        """(path relative to the study folder, object) of every object of a study but its
        manifest."""
        prefix = self.prefix(study_id)
        for obj in self.store.list(prefix):
            if not manifests.is_manifest(obj.key[len(prefix):]):
                yield obj.key[len(prefix):], obj

    def get(self, key: str) -> bytes:
        """The bytes of one object listed by ``objects``."""
        return self.store.get(key)

    def put(self, study_id: str, relative: str, data: bytes,
            content_type: str | None = None) -> str:
        """Write one object of a study; returns its key."""
        key = self.prefix(study_id) + relative.lstrip("/")
        self.store.put(key, data, content_type=content_type)
        return key
