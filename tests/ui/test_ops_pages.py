"""Pure parts of the ops pages: id checks, alerts, charts, escaping."""

from __future__ import annotations

import re

import pytest

from brain_tumor.evaluation import catalog
from brain_tumor_airflow.ui.charts import Series, line_chart
from brain_tumor_airflow.ui.data import (
    NotFound,
    check_model_version,
    check_png_name,
    check_study_id,
    headline,
)
from brain_tumor_airflow.ui.pages import NOTICE, gates_page, models_page, trends_page
from brain_tumor_airflow.ui.status import page_alerts


@pytest.mark.parametrize("value", ["..", ".", "../x", "a/../b", "/etc", "%2e%2e", "a/b", "",
                                   ".hidden", "a\\b", "m 1", "a\x00b"])
def test_ids_that_could_leave_a_prefix_are_refused(value: str) -> None:
    for check in (check_model_version, check_study_id):
        with pytest.raises(NotFound):
            check(value)
    with pytest.raises(NotFound):
        check_png_name(value + ".png" if value else value)


def test_plain_ids_pass() -> None:
    assert check_model_version("m-0123456789ab") == "m-0123456789ab"
    assert check_study_id("TCGA_CS_4941.v2") == "TCGA_CS_4941.v2"
    assert check_png_name("roc.png") == "roc.png"
    for reserved in ("quarantine", "_done", "batches"):
        with pytest.raises(NotFound):
            check_study_id(reserved)


def test_headline_takes_values_and_intervals() -> None:
    metrics = {"slice": {"sensitivity": 0.9}, "localization": {}, "patient": {},
               "calibration": {"ece": 0.05}, "intervals": {"sensitivity": [0.8, 0.95]}}
    got = headline(metrics)
    assert got["sensitivity"] == {"value": 0.9, "interval": [0.8, 0.95]}
    assert got["ece"] == {"value": 0.05, "interval": None}
    assert got["roc_auc"]["value"] is None and headline(None) == {}


def test_models_and_trends_show_the_catalog_metrics() -> None:
    metrics: dict = {section: {} for section in catalog.SECTIONS}
    for i, m in enumerate(catalog.METRICS):
        metrics[m.section][m.key] = 0.1 + i / 100
    metrics["intervals"] = {name: [0.01, 0.99] for name in catalog.INTERVAL_METRICS}
    shown = headline(metrics)
    assert list(shown) == [m.name for m in catalog.ON_PAGE]
    version = {"model": {"model_version": "m-1", "dataset_version": "ds-1",
                         "created_at": "2026-01-01T00:00:00+00:00"},
               "metrics": shown, "plots": [], "has_card": False}
    html = models_page("/b", {"champion": None, "history": [], "events": []}, [version], [])
    row = html[html.index('id="model-m-1"'):].split("</tr>")[0]
    for m in catalog.ON_PAGE:
        assert f">{m.short}</th>" in html
        value = m.text(m.value(metrics))
        assert value in row
        if m.interval:
            assert f'{value} <span class="muted">[0.010, 0.990]</span>' in row
    trends = trends_page("/b", [version], [], [], [])
    for name in catalog.NO_REGRESSION:
        assert f"{catalog.metric(name).short} m-1: " in trends
    assert "ECE, lower is better" in trends


def test_only_rejections_since_the_champion_moved_alert() -> None:
    events = [  # newest first
        {"action": "rejected", "model_version": "m-3", "at": "t3", "reason": "r3",
         "dataset_version": "d"},
        {"action": "promoted", "model_version": "m-2", "at": "t2", "reason": "ok"},
        {"action": "rejected", "model_version": "m-1", "at": "t1", "reason": "r1"},
    ]
    runs = [{"dag_id": "batch_score", "run_id": "r/1", "state": "failed"},
            {"dag_id": "retrain_nightly", "run_id": "r2", "state": "success"}]
    batches = [{"run_id": "b1", "studies_quarantined": 0},
               {"run_id": "b:2", "studies_quarantined": 1, "quarantined": [{"study_id": "s"}]}]
    alerts = page_alerts(runs, events, batches)
    assert [a["kind"] for a in alerts] == ["run_failed", "model_rejected", "studies_quarantined"]
    assert alerts[0]["link"] == "/dags/batch_score/runs/r%2F1"
    assert "m-3" in alerts[1]["text"] and alerts[1]["link"] == "gates#gate-m-3-d"
    assert alerts[2]["link"] == "scoring#batch-b_2"


def test_chart_escapes_and_handles_gaps() -> None:
    svg = line_chart("<script>", ["a", "b", "c"], [Series("x<y", [0.1, None, 0.3],
                                                          [[0.0, 0.2], None, None])])
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "x&lt;y" in svg
    assert svg.count("<polyline") == 2  # the gap splits the line
    assert "no data yet" in line_chart("empty", [], [])


def test_pages_escape_stored_text_and_carry_the_notice() -> None:
    result = {"model_version": "m-<b>", "dataset_version": "d", "champion_version": None,
              "passed": False, "checks": [{"name": "<img src=x>", "value": 0.5, "bound": 0.8,
                                           "op": ">=", "passed": False}]}
    html = gates_page("/brain-tumor", [result], [])
    assert "<img src=x>" not in html and "&lt;img src=x&gt;" in html
    assert html.count(NOTICE) == 2 and "FAIL" in html


def test_chart_axis_starts_at_zero_for_non_negative_data() -> None:
    svg = line_chart("ece", ["m1"], [Series("ECE", [0.24])])
    ticks = [float(t) for t in re.findall(r'text-anchor="end">([-0-9.e]+)<', svg)]
    assert min(ticks) == 0.0 and max(ticks) >= 0.24
