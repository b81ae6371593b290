"""brain_tumor.scoring.batch.scan: the planner's inputs read from a real S3 server."""

from __future__ import annotations

from brain_tumor.scoring import batch
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.registry import Registry
from brain_tumor.store.scores import ScoreStore


def test_scan_reads_arrivals_markers_and_earlier_champions(store, settings, trained):
    from support import copy_model

    source, record = trained
    first = copy_model(source, record["model_version"], settings)
    second = copy_model(source, record["model_version"], settings, as_version="m-second")
    registry = Registry(store, settings)
    registry.promote(first, reason="t")
    registry.promote(second, reason="t")
    for sid in ("s1", "s2", "s3"):
        store.put(f"incoming/{sid}/{sid}_1.tif", b"x")
    store.put("incoming/s1/P_2.tif", b"y")
    store.put("incoming/bad id/x_1.tif", b"z")  # not a study id: ignored
    for sid in ("s1", "s2", "s3"):
        IncomingStore(store, settings).seal(sid)
    store.put("incoming/s4/s4_1.tif", b"w")  # no manifest: incomplete, not planned
    store.put_json(ScoreStore(store, settings).done_key(first, "s1"), {})
    store.put_json(ScoreStore(store, settings).done_key(second, "s2"), {})
    store.put_json(ScoreStore(store, settings).quarantine_key(second, "s3"), {})

    inv = batch.scan(store, settings, second)

    assert sorted(inv.arrived) == ["s1", "s2", "s3"]
    assert list(inv.incomplete) == ["s4"]
    assert all(t.tzinfo is not None for t in inv.arrived.values())
    assert inv.done == {"s2"} and set(inv.quarantined) == {"s3"}
    assert inv.scored_before == {"s1"}
