"""brain_tumor.scoring.batch: which studies a scoring run takes on, and the batch summary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from brain_tumor.scoring import batch
from brain_tumor.scoring.batch import Inventory, plan_batch
from brain_tumor.settings import Settings
from brain_tumor.store.schemas import SchemaError
from brain_tumor.store.scores import ScoreStore

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def inventory(**kwargs: object) -> Inventory:
    values: dict = {"arrived": {}, "done": set(), "quarantined": {}, "scored_before": set()}
    values.update(kwargs)
    return Inventory(**values)


def test_new_studies_are_due_oldest_first_and_the_cap_defers_the_rest():
    inv = inventory(arrived={"c": ago(1), "a": ago(3), "b": ago(2), "d": ago(0)})
    plan = plan_batch("m-1", inv, NOW, window_days=7, limit=3)
    assert plan.study_ids == ["a", "b", "c"]
    assert (plan.deferred, plan.deferred_ids) == (1, ["d"])


def test_ties_in_arrival_are_broken_by_id():
    inv = inventory(arrived={"z": ago(1), "y": ago(1)})
    assert plan_batch("m-1", inv, NOW, 7, 10).study_ids == ["y", "z"]


def test_done_and_quarantined_studies_are_left_out_unless_uploaded_again():
    inv = inventory(arrived={"done": ago(1), "quar": ago(2), "fixed": ago(0.1)},
                    done={"done"}, quarantined={"quar": ago(1.5), "fixed": ago(1)})
    plan = plan_batch("m-1", inv, NOW, 7, 10)
    assert plan.study_ids == ["fixed"]  # re-uploaded after it was quarantined
    assert (plan.already_done, plan.quarantined_before) == (1, 1)


def test_after_a_champion_change_only_recent_studies_are_rescored():
    inv = inventory(arrived={"old": ago(30), "recent": ago(2), "never": ago(60)},
                    scored_before={"old", "recent"})
    plan = plan_batch("m-2", inv, NOW, window_days=7, limit=10)
    assert plan.study_ids == ["never", "recent"]  # never scored: due whatever its age
    assert plan.outside_window == 1
    assert plan_batch("m-2", inv, NOW, window_days=0, limit=10).study_ids == ["never"]
    assert plan_batch("m-2", inv, NOW, window_days=31, limit=10).study_ids == [
        "never", "old", "recent"]


def test_summary_counts_statuses_and_names_failed_studies():
    plan = {"model_version": "m-1", "study_ids": ["a", "b", "c", "d"], "already_done": 5,
            "quarantined_before": 0, "outside_window": 2, "deferred": 3}
    results = [
        {"study_id": "a", "status": "scored", "tumor_present": True, "slices": 10,
         "max_probability": 0.9, "timings": {"read_s": 1.0, "model_s": 2.0, "write_s": 0.5}},
        {"study_id": "b", "status": "scored", "tumor_present": False, "slices": 6,
         "max_probability": 0.1, "timings": {"read_s": 0.5, "model_s": 1.0, "write_s": 0.25}},
        {"study_id": "c", "status": "quarantined", "reason": "empty", "detail": "no slices"},
    ]
    summary = batch.summarize(plan, results, "scheduled__x", "t0", "t1", "scheduled")
    assert summary["studies_planned"] == 4
    assert (summary["studies_scored"], summary["studies_skipped"],
            summary["studies_quarantined"], summary["studies_failed"]) == (2, 5, 1, 1)
    assert summary["failed"] == ["d"]
    assert summary["quarantined"] == [{"study_id": "c", "reason": "empty",
                                       "detail": "no slices"}]
    assert (summary["tumors_found"], summary["slices_scored"]) == (1, 16)
    assert summary["mean_max_probability"] == pytest.approx(0.5)
    assert summary["seconds"] == {"read_s": 1.5, "model_s": 3.0, "write_s": 0.75}
    assert (summary["studies_deferred"], summary["studies_outside_window"]) == (3, 2)
    empty = batch.summarize({**plan, "study_ids": []}, [], "r", "t0", "t1")
    assert empty["mean_max_probability"] is None and empty["failed"] == []


def test_summary_with_a_malformed_plan_is_refused():
    with pytest.raises(KeyError):
        batch.summarize({"model_version": "m"}, [], "r", "t0", "t1")
    with pytest.raises(SchemaError):
        ScoreStore(None, None).write_batch({"run_id": "r"})  # type: ignore[arg-type]


def test_batch_key_is_safe_for_any_run_id():
    scores = ScoreStore(None, Settings())  # type: ignore[arg-type]
    key = scores.batch_key("scheduled__2026-06-01T12:00:00+00:00")
    assert key == "scores/batches/scheduled__2026-06-01T12_00_00_00_00.json"
    assert scores.batch_key("../../x") == "scores/batches/.._.._x.json"




def test_chunks_keep_the_order_and_cap_the_size():
    assert batch.chunks(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert batch.chunks(["a"], 8) == [["a"]]
    assert batch.chunks([], 3) == []
    with pytest.raises(ValueError, match="received 0"):
        batch.chunks(["a"], 0)
