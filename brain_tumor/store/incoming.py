"""The incoming store: studies waiting to be scored, under ``incoming/<study_id>/``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime

from brain_tumor.settings import Settings
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

    def study_ids(self) -> list[str]:
        """Sorted study ids (folder names) under ``incoming/``; invalid names are logged."""
        root = self.settings.key("incoming")
        studies = []
        for folder in self.store.list_dirs(root):
            name = folder[len(root):].strip("/")
            if is_study_id(name):
                studies.append(name)
            else:
                log.warning("skipping incoming folder with an invalid study id: %r", name)
        return sorted(studies)

    def arrivals(self) -> dict[str, datetime]:
        """Study id -> newest upload time of its objects (one listing of ``incoming/``)."""
        root = self.settings.key("incoming")
        arrived: dict[str, datetime] = {}
        for obj in self.store.list(root):
            sid = obj.key[len(root):].split("/", 1)[0]
            if not is_study_id(sid) or obj.last_modified is None:
                continue
            arrived[sid] = max(arrived.get(sid, obj.last_modified), obj.last_modified)
        return arrived

    def objects(self, study_id: str) -> Iterator[tuple[str, ObjectInfo]]:
        """(path relative to the study folder, object) of every object of a study."""
        prefix = self.prefix(study_id)
        for obj in self.store.list(prefix):
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
