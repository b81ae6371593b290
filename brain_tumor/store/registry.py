"""The model registry in S3: an append-only event log and a champion pointer.

The log is the source of truth: one immutable object per decision at
``registry/events/<seq:08d>.json``, written with If-None-Match: * so exactly one writer wins each
seq. A writer reads the log up to N, decides against the champion it implies, and writes N+1; if
another writer took N+1 first, it gets ``PromotionConflict`` (no silent retry).
The champion is a stack: ``promoted`` X pushes X, ``rolled_back`` pops, ``rejected`` leaves it.
``registry/champion.json`` caches its top for readers and moves only by compare-and-swap after
the event write. Readers never write: ``champion()`` derives the champion from the log and warns
when the pointer disagrees (a crash between the event write and the pointer move). ``repair()``
moves such a pointer; every write (promote, reject, rollback) repairs it after its event.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, NamedTuple

from brain_tumor.settings import Settings
from brain_tumor.store.datasets import utc_now
from brain_tumor.store.modelstore import ModelNotFound, ModelStore
from brain_tumor.store.schemas import SchemaError, validate_record
from brain_tumor.store.storage import KeyNotFound, ObjectStore, PreconditionFailed, StorageError

log = logging.getLogger(__name__)

ACTIONS = ("promoted", "rejected", "rolled_back")
_EVENT_NAME = re.compile(r"(\d{8})\.json")
_CAS_ATTEMPTS, _REJECT_ATTEMPTS = 6, 10  # pointer CAS tries; rejection write tries


class RegistryError(RuntimeError):
    """A registry operation is not allowed (unknown model, nothing to roll back to, ...)."""


class PromotionConflict(RegistryError):
    """The champion changed since the caller decided: re-run the decision against the new one."""


#: sentinel default of ``expected_champion``: decide against whatever the champion is now
CURRENT: Any = object()


class _PointerCheck(NamedTuple):
    """The champion the event log implies, the event that set it, the pointer and its ETag."""

    champion: str | None
    event: str | None
    pointer: dict[str, Any] | None
    etag: str | None
    verdict: str  # agrees | stale | listing_behind (pointer newer than the listing) | no_champion


class Registry:
    """Promotions, rejections and rollbacks of model versions, recorded in S3."""

    def __init__(self, store: ObjectStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.models = ModelStore(store, settings)
        self._cache: dict[str, dict[str, Any]] = {}  # event key -> record (events are immutable)
        self.events_prefix = settings.key("registry", "events") + "/"
        self.pointer_key = settings.key("registry", "champion.json")

    def event_key(self, seq: int) -> str:
        """Key of the event with sequence number seq."""
        return f"{self.events_prefix}{seq:08d}.json"

    def events(self) -> list[dict[str, Any]]:
        """Every event, ordered by seq."""
        found: list[tuple[int, dict[str, Any]]] = []
        for info in self.store.list(self.events_prefix):
            seq = _seq_of(info.key) if "/" not in info.key[len(self.events_prefix):] else None
            if seq is None:
                log.warning("ignoring unexpected object %s in the registry event log", info.key)
                continue
            record = self._cache.get(info.key)
            if record is None:
                record = validate_record("registry_event", self.store.get_json(info.key))
                if record.get("seq") != seq or record["action"] not in ACTIONS:
                    raise RegistryError(f"event {info.key} is inconsistent: seq "
                                        f"{record.get('seq')!r} (key says {seq}), action "
                                        f"{record['action']!r} (known: {', '.join(ACTIONS)})")
                self._cache[info.key] = record
            found.append((record["seq"], dict(record)))
        if (seqs := sorted(s for s, _ in found)) != list(range(1, len(found) + 1)):
            log.warning("registry event log has gaps: seqs %s", seqs)
        return [e for _, e in sorted(found, key=lambda item: item[0])]

    @staticmethod
    def _replay(events: list[dict[str, Any]]) -> tuple[list[str], int | None]:
        """The champion stack after the events, and the seq of the last event that moved it."""
        stack: list[str] = []
        moved_by = None
        for e in events:
            if e["action"] == "promoted":
                stack.append(e["model_version"])
            elif e["action"] == "rolled_back":
                stack = stack[:-1]
                if not stack or stack[-1] != e["model_version"]:
                    log.warning("event %s rolls back to %s but the history says %s; trusting "
                                "the event", e["seq"], e["model_version"], stack[-1:] or None)
                    stack = [*stack[:-1], e["model_version"]]
            else:
                continue
            moved_by = e["seq"]
        return stack, moved_by

    def _state(self) -> tuple[list[dict[str, Any]], list[str], str | None]:
        """The events, the champion stack and the champion."""
        stack = self._replay(events := self.events())[0]
        return events, stack, stack[-1] if stack else None

    def _model(self, model_version: str, what: str) -> dict[str, Any]:
        """The model.json record, or RegistryError naming the missing version."""
        try:
            return self.models.record(model_version)
        except ModelNotFound as exc:
            raise RegistryError(f"cannot {what} model version {model_version!r}: it does not "
                                f"exist (no {self.models.key(model_version, 'model.json')})"
                                ) from exc

    def champion_history(self) -> list[str]:
        """The champion stack, oldest first; the last entry is the champion."""
        return self._state()[1]

    def champion(self) -> str | None:
        """The champion the event log implies; warns, never writes, if the pointer disagrees."""
        check = self._check_pointer()
        if check.verdict == "listing_behind":
            log.info("champion pointer names %s, newer than the listing shows; trusting the "
                     "listing (champion %s)", check.pointer and check.pointer["event"],
                     check.champion)
        elif check.verdict == "stale":
            log.warning("champion pointer says %s, the event log says %s (event %s); the next "
                        "registry write or `brain-tumor registry repair` moves it",
                        check.pointer and check.pointer["model_version"], check.champion,
                        check.event)
        return check.champion

    def repair(self) -> str | None:
        """Move a pointer that disagrees with the event log (compare-and-swap); the champion."""
        return self._sync_pointer(warn=True)

    def show(self, model_version: str) -> dict[str, Any]:
        """The model's model.json, the events naming it, and whether it is the champion."""
        record = self._model(model_version, "show")
        events, _, current = self._state()
        mine = [e for e in events if model_version in (e["model_version"], e["previous_champion"])]
        return {"model": record, "events": mine, "champion": current == model_version}

    def promote(self, model_version: str, *, reason: str, metrics: dict[str, Any] | None = None,
                dataset_version: str | None = None, run_id: str | None = None,
                expected_champion: str | None = CURRENT) -> dict[str, Any]:
        """Make model_version the champion; PromotionConflict if the champion moved meanwhile."""
        record = self._model(model_version, "promote")
        events, _, current = self._state()
        self._expect(expected_champion, current, f"promote {model_version!r}")
        if model_version == current:
            raise RegistryError(f"model version {model_version!r} is already the champion")
        return self._commit(events, "promoted", model_version, current, reason, metrics,
                            dataset_version or record["dataset_version"], run_id)

    def reject(self, model_version: str, *, reason: str, metrics: dict[str, Any] | None = None,
               dataset_version: str | None = None, run_id: str | None = None) -> dict[str, Any]:
        """Record that model_version was not promoted; the champion does not change."""
        self._model(model_version, "reject")
        for _ in range(_REJECT_ATTEMPTS):  # a rejection stays true whoever wins: retry is safe
            events, _, current = self._state()
            try:
                return self._commit(events, "rejected", model_version, current, reason,
                                    metrics, dataset_version, run_id)
            except PromotionConflict as exc:
                log.info("retrying the rejection of %s: %s", model_version, exc)
        raise RegistryError(f"could not record the rejection of {model_version!r} after "
                            f"{_REJECT_ATTEMPTS} attempts: the event log keeps moving")

    def rollback(self, *, reason: str, run_id: str | None = None,
                 expected_champion: str | None = CURRENT) -> dict[str, Any]:
        """Return to the champion before the current one (pops the champion stack)."""
        events, stack, current = self._state()
        self._expect(expected_champion, current, "roll back")
        if len(stack) < 2:
            raise RegistryError(f"no previous champion to roll back to (champion history: {stack})")
        try:
            dataset_version = self.models.record(stack[-2])["dataset_version"]
        except (ModelNotFound, SchemaError):
            dataset_version = None
        return self._commit(events, "rolled_back", stack[-2], current, reason, None,
                            dataset_version, run_id)

    @staticmethod
    def _expect(expected: str | None, current: str | None, what: str) -> None:
        if expected is not CURRENT and expected != current:
            raise PromotionConflict(f"cannot {what}: decided against champion {expected!r}, "
                                    f"but the champion is now {current!r}")

    def _commit(self, events: list[dict[str, Any]], action: str, model_version: str,
                previous: str | None, reason: str, metrics: dict[str, Any] | None,
                dataset_version: str | None, run_id: str | None) -> dict:
        """Write the event after the last one read (one writer wins), then sync the pointer."""
        seq = events[-1]["seq"] + 1 if events else 1
        event = validate_record("registry_event", {
            "seq": seq, "action": action, "model_version": model_version, "reason": reason,
            "previous_champion": previous, "dataset_version": dataset_version,
            "metrics": metrics, "run_id": run_id, "at": utc_now()})
        key = self.event_key(seq)
        if not self.store.put_json(key, event, new=True):
            try:
                other = "{action} {model_version}".format(**self.store.get_json(key))
            except (StorageError, KeyError, TypeError):
                other = "unknown"
            raise PromotionConflict(
                f"cannot record {action} {model_version}: seq {seq} was taken by another writer "
                f"({other}) after this decision was made against champion {previous!r}; "
                "decide again against the new champion")
        self._cache[key] = event
        log.info("event %d: %s %s (was %s): %s", seq, action, model_version, previous, reason)
        # a rejection leaves the champion: a pointer that disagrees now was left behind by a crash
        self._sync_pointer(warn=action == "rejected")
        return dict(event)

    def _read_pointer(self) -> tuple[dict[str, Any] | None, str | None]:
        """The pointer record (None if missing or unreadable) and its ETag (None if missing)."""
        try:
            raw, etag = self.store.get_with_etag(self.pointer_key)
        except KeyNotFound:
            return None, None
        try:
            return validate_record("champion", json.loads(raw)), etag
        except (ValueError, SchemaError) as exc:
            log.warning("champion pointer %s is unreadable (%s)", self.pointer_key, exc)
            return None, etag

    def _check_pointer(self) -> _PointerCheck:
        """Compare the pointer with the champion the event log implies."""
        events = self.events()
        stack, moved_by = self._replay(events)
        pointer, etag = self._read_pointer()
        if not stack or moved_by is None:
            if pointer is not None:
                log.warning("champion pointer names %s, the event log no champion: ignoring the "
                            "pointer", pointer["model_version"])
            return _PointerCheck(None, None, pointer, etag, "no_champion")
        champion, key = stack[-1], self.event_key(moved_by)
        if pointer and (pointer["model_version"], pointer["event"]) == (champion, key):
            verdict = "agrees"
        elif pointer and (_seq_of(pointer["event"]) or 0) > events[-1]["seq"]:
            verdict = "listing_behind"
        else:
            verdict = "stale"
        return _PointerCheck(champion, key, pointer, etag, verdict)

    def _sync_pointer(self, warn: bool) -> str | None:
        """Move the pointer (by CAS) to the champion the event log implies; return that champion."""
        champion: str | None = None
        for attempt in range(_CAS_ATTEMPTS):
            check = self._check_pointer()
            champion = check.champion
            if check.verdict in ("no_champion", "agrees"):
                return champion
            if check.verdict == "listing_behind" and attempt < _CAS_ATTEMPTS - 1:
                continue  # the pointer knows a newer event than this listing shows: list again
            (log.warning if warn else log.info)(
                "champion pointer says %s, the event log says %s (event %s); updating it",
                check.pointer and check.pointer["model_version"], champion, check.event)
            data = json.dumps(validate_record("champion", {
                "model_version": champion, "event": check.event, "updated_at": utc_now()})).encode()
            try:
                self.store.put(self.pointer_key, data, if_match=check.etag,
                               if_none_match=check.etag is None, content_type="application/json")
                return champion
            except PreconditionFailed:
                log.info("champion pointer moved under us; reading the log again")
        log.warning("champion pointer not updated after %d tries: the next registry write or "
                    "`brain-tumor registry repair` moves it", _CAS_ATTEMPTS)
        return champion


def _seq_of(event_key: str) -> int | None:
    """The seq of an event key, or None if the key is not an event key."""
    match = _EVENT_NAME.fullmatch(event_key.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None
