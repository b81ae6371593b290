"""Leases: one holder at a time for a piece of work, taken by a conditional write.

A lease is one JSON object (``lease_record``) created with ``If-None-Match: *``: the writer
whose PUT creates it holds it. Another writer that finds it stops with ``LeaseHeld``, naming
the holder and the expiry, unless the lease is stale: past its ``expires_at``, held by a
process of this host that no longer runs, or unreadable. A stale lease is taken over by
compare-and-swap on its ETag (``If-Match``), so of two writers taking it over one wins. The
holder deletes the lease when its work ends, well or not, and only while the lease is still its
own (its ``token``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from brain_tumor.store.storage import KeyNotFound, ObjectStore, PreconditionFailed, StorageError

log = logging.getLogger(__name__)

#: how often acquire re-reads a lease that changed under it before giving up
ATTEMPTS = 3


class LeaseHeld(RuntimeError):
    """Another process holds the lease; ``record`` is the lease as read."""

    def __init__(self, key: str, record: dict) -> None:
        self.key, self.record = key, record
        super().__init__(f"{describe(record)} (lease {key})")


@dataclass(frozen=True)
class Lease:
    """A lease this process holds: its key, its record and the ETag it was written with."""

    key: str
    record: dict
    etag: str


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def lease_record(purpose: str, minutes: float, now: datetime | None = None) -> dict:
    """The record of a lease held by this process from now for minutes."""
    if minutes <= 0:
        raise ValueError(f"a lease must last more than 0 minutes, received {minutes!r}")
    now = now or datetime.now(UTC)
    return {"purpose": purpose, "token": uuid.uuid4().hex,
            "holder": {"host": socket.gethostname(), "pid": os.getpid(), "started_at": _iso(now)},
            "expires_at": _iso(now + timedelta(minutes=minutes))}


def describe(record: dict) -> str:
    """The holder and expiry of a lease, in words."""
    holder = record.get("holder") or {}
    return (f"{record.get('purpose', 'the work')} is held by pid {holder.get('pid')} on host "
            f"{holder.get('host')!r} since {holder.get('started_at')}, until "
            f"{record.get('expires_at')}")


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if not 0 < pid < 2**31:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_reason(record: Any, now: datetime | None = None,
                 host: str | None = None) -> str | None:
    """Why a lease may be taken over (expired, its process gone, unreadable); None while it
    holds."""
    now = now or datetime.now(UTC)
    host = host or socket.gethostname()
    try:
        expires = datetime.fromisoformat(record["expires_at"])
        holder = record["holder"]
        pid = int(holder["pid"])
    except (KeyError, TypeError, ValueError):
        return f"the lease cannot be read ({str(record)[:200]!r})"
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    if now >= expires:
        return f"it expired at {record['expires_at']}"
    if holder.get("host") == host and not process_alive(pid):
        return f"its process {pid} on this host ({host!r}) no longer runs"
    return None


def _read(store: ObjectStore, key: str) -> tuple[Any, str] | None:
    """The lease at key as read (a dict, or the raw text when it is not JSON) and its ETag."""
    try:
        raw, etag = store.get_with_etag(key)
    except KeyNotFound:
        return None
    try:
        return json.loads(raw), etag
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw[:200].decode("utf-8", "replace"), etag


def acquire(store: ObjectStore, key: str, purpose: str, minutes: float) -> Lease:
    """Take the lease at key for minutes; LeaseHeld when another process holds it."""
    for _ in range(ATTEMPTS):
        record = lease_record(purpose, minutes)
        body = json.dumps(record, indent=2, sort_keys=True).encode()
        try:
            etag = store.put(key, body, if_none_match=True, content_type="application/json")
            return Lease(key, record, etag)
        except PreconditionFailed:
            pass
        found = _read(store, key)
        if found is None:  # released between the two calls
            continue
        current, current_etag = found
        why = stale_reason(current)
        if why is None:
            raise LeaseHeld(key, current)
        try:
            etag = store.put(key, body, if_match=current_etag, content_type="application/json")
        except PreconditionFailed:  # another process took it over first
            continue
        log.warning("took over the lease %s: %s; %s",
                    key, describe(current) if isinstance(current, dict) else "unreadable", why)
        return Lease(key, record, etag)
    found = _read(store, key)
    if found is not None and isinstance(found[0], dict):
        raise LeaseHeld(key, found[0])
    raise StorageError(f"cannot take the lease {key}: it changed on each of {ATTEMPTS} tries")


def release(store: ObjectStore, lease: Lease) -> bool:
    """Delete the lease if it is still this holder's; False (and a warning) otherwise."""
    try:
        found = _read(store, lease.key)
        if found is None or not isinstance(found[0], dict) or \
                found[0].get("token") != lease.record["token"]:
            log.warning("lease %s is no longer this process's (%s); left as it is", lease.key,
                        "gone" if found is None else describe(found[0])
                        if isinstance(found[0], dict) else "unreadable")
            return False
        store.delete(lease.key)
    except StorageError as exc:
        log.warning("cannot release the lease %s (it goes stale when this process ends, or at "
                    "%s): %s", lease.key, lease.record["expires_at"], exc)
        return False
    return True


@contextmanager
def held(store: ObjectStore, key: str, purpose: str, minutes: float) -> Iterator[Lease]:
    """Hold the lease at key while the block runs; released however the block ends."""
    lease = acquire(store, key, purpose, minutes)
    try:
        yield lease
    finally:
        release(store, lease)
