"""Which PACS studies are due: the StudyDate window, the QIDO answer, the stability rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from brain_tumor.store.ids import study_id_from_uid
from brain_tumor.store.pacs import Listed, date_range, due_studies, parse_studies

T0 = datetime(2026, 3, 4, 5, 6, tzinfo=UTC)


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def test_window_is_a_studydate_range_ending_today():
    assert date_range(3, T0) == "20260301-20260304"
    assert date_range(0.5, T0) == "20260303-20260304"
    with pytest.raises(ValueError, match="received 0 days"):
        date_range(0, T0)


def test_first_sight_is_not_due_until_the_count_has_held_for_the_stable_time():
    due, seen = due_studies({}, {"dcm-a": 3}, T0, 10)
    assert due == [] and seen == {"dcm-a": {"instances": 3, "since": T0.isoformat()}}
    due, again = due_studies(seen, {"dcm-a": 3}, minutes(9.9), 10)
    assert due == [] and again == seen  # "since" is kept while the count holds
    due, _ = due_studies(seen, {"dcm-a": 3}, minutes(10), 10)
    assert due == ["dcm-a"]


def test_a_study_still_arriving_starts_over():
    _, seen = due_studies({}, {"dcm-a": 3}, T0, 10)
    due, seen = due_studies(seen, {"dcm-a": 5}, minutes(12), 10)  # two more instances came
    assert due == [] and seen["dcm-a"] == {"instances": 5, "since": minutes(12).isoformat()}
    due, _ = due_studies(seen, {"dcm-a": 5}, minutes(22), 10)
    assert due == ["dcm-a"]


def test_zero_stable_minutes_takes_a_study_at_first_sight():
    assert due_studies({}, {"dcm-a": 1}, T0, 0)[0] == ["dcm-a"]


def test_studies_no_longer_listed_leave_the_record_and_due_ones_come_oldest_first():
    seen = {"dcm-old": {"instances": 2, "since": minutes(-60).isoformat()},
            "dcm-new": {"instances": 2, "since": minutes(-20).isoformat()},
            "dcm-gone": {"instances": 9, "since": minutes(-90).isoformat()}}
    due, record = due_studies(seen, {"dcm-new": 2, "dcm-old": 2, "dcm-first": 4}, T0, 15)
    assert due == ["dcm-old", "dcm-new"]
    assert sorted(record) == ["dcm-first", "dcm-new", "dcm-old"]


def test_an_unreadable_or_future_record_entry_counts_from_now():
    seen = {"dcm-a": {"instances": 2, "since": "yesterday"},
            "dcm-b": {"instances": 2, "since": minutes(30).isoformat()}}
    due, record = due_studies(seen, {"dcm-a": 2, "dcm-b": 2}, T0, 5)
    assert due == []
    assert {sid: r["since"] for sid, r in record.items()} == {"dcm-a": T0.isoformat(),
                                                              "dcm-b": T0.isoformat()}
    with pytest.raises(ValueError, match="received -1"):
        due_studies({}, {}, T0, -1)


def _qido(uid: str | None, count: int | None) -> dict:
    record: dict = {"00080020": {"vr": "DA", "Value": ["20260304"]}}
    if uid is not None:
        record["0020000D"] = {"vr": "UI", "Value": [uid]}
    if count is not None:
        record["00201208"] = {"vr": "IS", "Value": [count]}
    return record


def test_qido_answer_gives_uid_study_id_and_count_and_skips_unusable_records(caplog):
    uid = "1.2.826.0.1.3680043.8.498.1"
    studies = parse_studies([_qido(uid, 9), _qido(None, 3), _qido("1.2.3", None),
                             {"0020000D": {"vr": "UI"}}])
    assert studies == [Listed(uid, study_id_from_uid(uid), 9)]
    assert studies[0].study_id.startswith("dcm-") and uid not in studies[0].study_id
    assert caplog.text.count("left out") == 3
    assert "1.2.3" not in caplog.text  # what is logged names no UID
