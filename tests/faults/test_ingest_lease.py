"""The lease an ingest holds on its export: a second ingest stops at once, a stale lease is taken
over, and the lease is released however the ingest ends.

Leases are written here as another holder would write them, on the test's S3 server (moto;
the conditional writes once more on SeaweedFS); two real processes racing for one are in
``test_concurrency.py``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from brain_tumor import steps
from brain_tumor.cli import main
from brain_tumor.devtools.synth import SynthSpec, make_export
from brain_tumor.ingest.exports import upload_export
from brain_tumor.ingest.run import IngestBusy, ingest_export, lease_key
from brain_tumor.settings import load_settings, settings_to_env
from brain_tumor.store.datasets import DatasetStore
from brain_tumor.store.leases import LeaseHeld, acquire, lease_record, release, stale_reason
from brain_tumor.store.storage import ObjectStore

SPEC = SynthSpec(patients=2, slices=3, size=32, tumor_free_patients=0)


def _keys(store) -> list[str]:
    return [o.key for o in store.list("")]


def _lease(store, settings, export_id: str, *, host: str | None = None, pid: int | None = None,
           expires_in: timedelta = timedelta(hours=1)) -> dict:
    """Write the lease of another ingest of export_id, as that ingest would have."""
    now = datetime.now(UTC)
    record = lease_record(f"the ingest of export {export_id}", 120, now=now)
    record["holder"].update(host=host or socket.gethostname(), pid=pid or os.getpid())
    record["expires_at"] = (now + expires_in).isoformat(timespec="seconds")
    store.put_json(lease_key(settings, export_id), record)
    return record


def _gone_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


@pytest.fixture
def exported(tmp_path: Path, settings, store):
    """An uploaded export e1."""
    upload_export(store, settings, make_export(tmp_path / "e1", SPEC).root, export_id="e1")
    return settings, store


def test_a_held_lease_stops_the_ingest_before_it_reads_and_names_the_holder(exported, capsys,
                                                                            monkeypatch):
    settings, store = exported
    record = _lease(store, settings, "e1", host="worker-7", pid=4242)
    before = {o.key: o.etag for o in store.list("")}
    for key, value in settings_to_env(settings).items():
        monkeypatch.setenv(key, value)

    assert main(["ingest", "e1"]) == 1

    err = capsys.readouterr().err
    assert "export e1 is being ingested by another process" in err
    assert "pid 4242 on host 'worker-7'" in err and record["expires_at"] in err
    assert "ledger/leases/e1.json" in err and "writes nothing" in err
    assert {o.key: o.etag for o in store.list("")} == before  # the lease is the other's still
    assert DatasetStore(store, settings).entry("e1") is None
    with pytest.raises(IngestBusy):
        ingest_export(store, settings, "e1")


def test_a_lease_of_a_process_alive_on_this_host_holds(exported):
    settings, store = exported
    _lease(store, settings, "e1")  # this very process
    with pytest.raises(IngestBusy, match=f"pid {os.getpid()} on host"):
        ingest_export(store, settings, "e1")


@pytest.mark.parametrize("stale", ["expired", "process_gone", "unreadable"])
def test_a_stale_lease_is_taken_over_and_the_log_says_so(exported, caplog, stale):
    settings, store = exported
    key = lease_key(settings, "e1")
    if stale == "expired":  # another machine, past its expiry
        _lease(store, settings, "e1", host="worker-7", pid=4242, expires_in=timedelta(minutes=-1))
    elif stale == "process_gone":  # killed on this machine, before its expiry
        _lease(store, settings, "e1", pid=_gone_pid())
    else:
        store.put(key, b"\x00 not json")
    why = {"expired": "it expired at", "process_gone": "no longer runs",
           "unreadable": "cannot be read"}[stale]

    with caplog.at_level(logging.WARNING, logger="brain_tumor.store.leases"):
        result = ingest_export(store, settings, "e1")

    assert result.counts["accepted"] == 6 and not result.already_ingested
    assert f"took over the lease {key}" in caplog.text and why in caplog.text
    assert not store.exists(key)


def test_the_lease_is_released_on_success_and_on_failure(tmp_path, settings, store):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("no slices here")
    upload_export(store, settings, notes, export_id="a-bad")
    upload_export(store, settings, make_export(tmp_path / "good", SPEC).root, export_id="b-good")

    result = steps.ingest(settings, ["a-bad", "b-good"])

    assert [r["export_id"] for r in result["rejected"]] == ["a-bad"]
    assert [r["export_id"] for r in result["exports"]] == ["b-good"]
    assert list(store.list(settings.key("ledger", "leases"))) == []
    again = ingest_export(store, settings, "b-good")  # a re-run takes and releases it too
    assert again.already_ingested
    assert list(store.list(settings.key("ledger", "leases"))) == []


def test_a_lease_taken_over_is_not_released_by_its_former_holder(settings, store, caplog):
    key = lease_key(settings, "e1")
    first = acquire(store, key, "work", 1)
    record = json.loads(store.get(key))
    record["expires_at"] = "2000-01-01T00:00:00+00:00"
    store.put_json(key, record)  # it ran past its lease
    second = acquire(store, key, "work", 1)
    with caplog.at_level(logging.WARNING, logger="brain_tumor.store.leases"):
        assert release(store, first) is False
    assert "no longer this process's" in caplog.text
    assert json.loads(store.get(key))["token"] == second.record["token"]
    assert release(store, second) and not store.exists(key)


def test_stale_reason_reads_expiry_host_and_pid():
    now = datetime(2024, 1, 1, 12, tzinfo=UTC)
    record = lease_record("work", 30, now=now)
    assert stale_reason(record, now=now) is None  # this process, alive
    assert "expired at 2024-01-01T12:30:00+00:00" in stale_reason(
        record, now=now + timedelta(minutes=31))
    gone = {**record, "holder": {**record["holder"], "pid": _gone_pid()}}
    assert "no longer runs" in stale_reason(gone, now=now)
    assert stale_reason(gone, now=now, host="another-host") is None  # cannot tell: it holds
    assert "cannot be read" in stale_reason({"holder": {}}, now=now)
    with pytest.raises(ValueError, match="received 0"):
        lease_record("work", 0)


@pytest.mark.seaweedfs
def test_leases_on_seaweedfs(seaweed):
    """The conditional writes a lease rests on (If-None-Match, If-Match) on the default server."""
    settings = load_settings(env={}, s3_endpoint_url=seaweed.endpoint, s3_bucket=seaweed.bucket,
                             s3_access_key_id=seaweed.access_key,
                             s3_secret_access_key=seaweed.secret_key)
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    key = f"leases-test/{uuid.uuid4().hex}.json"
    first = acquire(store, key, "work", 1)
    with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
        acquire(store, key, "work", 1)
    expired = {**first.record, "expires_at": "2000-01-01T00:00:00+00:00"}
    store.put_json(key, expired)
    second = acquire(store, key, "work", 1)  # taken over by If-Match on the read ETag
    assert json.loads(store.get(key))["token"] == second.record["token"]
    assert not release(store, first) and release(store, second) and not store.exists(key)
