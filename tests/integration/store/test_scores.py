"""brain_tumor.store.scores and brain_tumor.store.incoming against a real S3 server: the only
code that builds scores/ and incoming/ keys."""

from __future__ import annotations

import pytest

from brain_tumor.store.ids import InvalidId
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.schemas import SchemaError
from brain_tumor.store.scores import ScoreStore

SUMMARY = {"study_id": "s1", "model_version": "m-1", "dataset_version": "ds-1",
           "tumor_present": True, "tumor_slices": 2, "slices": 5, "tumor_volume_voxels": 40,
           "max_probability": 0.9, "scored_at": "2026-06-01T00:00:00+00:00"}


def test_keys_follow_the_documented_layout(settings):
    scores = ScoreStore(None, settings)  # type: ignore[arg-type]
    assert scores.output_key("m-1", "s1", "masks/3.png") == "scores/m-1/s1/masks/3.png"
    assert scores.done_key("m-1", "s1") == "scores/m-1/_done/s1.json"
    assert scores.quarantine_key("m-1", "s1") == "scores/m-1/quarantine/s1.json"
    assert scores.batch_key("manual__2026-06-01T00:00:00") == \
        "scores/batches/manual__2026-06-01T00_00_00.json"
    for bad in ("../x", "quarantine", "_done", "a/b", ""):
        with pytest.raises(InvalidId):
            scores.output_key("m-1", bad, "summary.json")


def test_commit_writes_summary_then_marker_and_clears_quarantine(store, settings):
    scores = ScoreStore(store, settings)
    scores.quarantine("m-1", "s1", {"study_id": "s1", "model_version": "m-1", "reason": "empty",
                                    "detail": "no slices", "files": [], "at": "2026-06-01"})
    with pytest.raises(SchemaError):
        scores.quarantine("m-1", "s2", {"study_id": "s2", "reason": "empty"})
    assert scores.quarantined_ids("m-1").keys() == {"s1"}
    assert scores.result("m-1", "s1") is None
    assert scores.commit("m-1", "s1", dict(SUMMARY), {"study_id": "s1"}) is True
    assert scores.is_done("m-1", "s1")
    assert scores.result("m-1", "s1")["tumor_slices"] == 2
    assert scores.result("m-1", "s1")["schema_version"] == 1
    assert scores.quarantine_record("m-1", "s1") is None
    assert scores.commit("m-1", "s1", dict(SUMMARY), {"study_id": "s1"}) is False  # second
    with pytest.raises(SchemaError):
        scores.commit("m-1", "s2", {"study_id": "s2"}, {})
    assert not scores.is_done("m-1", "s2")


def test_listings_across_model_versions_and_batches(store, settings):
    scores = ScoreStore(store, settings)
    for version, sid in (("m-1", "s1"), ("m-2", "s2"), ("m-2", "s3")):
        scores.commit(version, sid, {**SUMMARY, "study_id": sid, "model_version": version},
                      {"study_id": sid})
    scores.put_output("m-2", "s2", "overlays/7.png", b"png", "image/png")
    scores.put_output("m-2", "s2", "overlays/12.png", b"png", "image/png")
    assert scores.model_versions() == ["m-1", "m-2"]
    assert set(scores.done_ids("m-2")) == {"s2", "s3"}
    assert sorted((s.model_version, s.study_id) for s in scores.scored(10)) == \
        [("m-1", "s1"), ("m-2", "s2"), ("m-2", "s3")]
    assert len(scores.scored(2)) == 2
    assert scores.overlay_slices("m-2", "s2") == [7, 12]
    assert scores.output_names("m-2", "s2") == ["overlays/12.png", "overlays/7.png",
                                                "summary.json"]
    assert scores.batches(5) == []


def test_incoming_lists_valid_studies_and_their_arrival(store, settings):
    incoming = IncomingStore(store, settings)
    incoming.put("a1", "x_1.tif", b"1")
    incoming.put("a1", "sub/x_2.tif", b"2")
    incoming.put("b2", "y_1.tif", b"3")
    store.put(settings.key("incoming", "bad id", "z_1.tif"), b"4")
    incoming.put("c3", "z_1.tif", b"5")  # no manifest: an upload not finished
    for sid in ("a1", "b2"):
        incoming.seal(sid)
    assert incoming.study_ids() == ["a1", "b2"]
    assert list(incoming.incomplete()) == ["c3"]
    assert set(incoming.arrivals()) == {"a1", "b2"}
    assert sorted(rel for rel, _ in incoming.objects("a1")) == ["sub/x_2.tif", "x_1.tif"]
    with pytest.raises(InvalidId):
        incoming.prefix("..")
