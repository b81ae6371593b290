"""The out-of-distribution flag and drift on the ops pages: scoring, study and trends."""

from __future__ import annotations

from brain_tumor_airflow.ui.pages import scoring_page, study_page, trends_page

REASON = {"statistic": "input_distance", "value": 41.2, "bound": 6.3, "slices_over": 1.0}


def _batch(run: str, started: str, drift: dict | None, flagged: list[dict]) -> dict:
    return {"run_id": run, "model_version": "m-1", "started_at": started,
            "finished_at": started, "studies_scored": 3, "studies_skipped": 0,
            "studies_quarantined": 0, "studies_failed": 0, "tumors_found": 1,
            "mean_max_probability": 0.5, "quarantined": [],
            "studies_out_of_distribution": len(flagged), "out_of_distribution": flagged,
            "drift": drift}


DRIFT = {"psi_bound": 0.25, "ood_score": {"psi": 0.12, "ks": 0.2, "n": 12},
         "probability": {"psi": 1.7, "ks": 0.6, "n": 240}, "exceeded": ["probability"]}


def test_scoring_page_shows_flagged_studies_with_reasons_and_drift() -> None:
    flagged = [{"study_id": "CT<1>", "ood_score": 6.5, "reasons": [REASON]}]
    html = scoring_page("/b", [_batch("r1", "2026-03-01T10:00:00+00:00", DRIFT, flagged)],
                        [], [], [])
    assert "out of distribution</th>" in html
    assert "CT&lt;1&gt;" in html and "CT<1>" not in html  # escaped
    assert "input_distance 41.20 &gt; 6.30 (100% of slices)" in html
    assert "probability PSI 1.700" in html and "over 0.25: probability" in html


def test_study_page_flags_the_study_plainly() -> None:
    summary = {"study_id": "s1", "model_version": "m-1", "out_of_distribution": True,
               "ood_score": 6.5, "ood_slices": 4, "ood_reasons": [REASON], "withheld": True,
               "ood_note": None}
    html = study_page("/b", "m-1", {"summary": summary, "overlays": []}, [])
    assert 'id="ood-flag"' in html and "OUT OF DISTRIBUTION" in html
    assert "withheld" in html and "input_distance 41.20" in html
    calm = study_page("/b", "m-1", {"summary": {**summary, "out_of_distribution": False},
                                    "overlays": []}, [])
    assert 'id="ood-flag"' not in calm


def test_trends_plot_the_per_batch_psi_with_its_bound() -> None:
    batches = [_batch("r2", "2026-03-02T10:00:00+00:00", DRIFT, []),
               _batch("r1", "2026-03-01T10:00:00+00:00", None, [])]
    html = trends_page("/b", [], [], batches, [])
    assert "Drift against the validation slices (PSI" in html
    for name in ("OOD score PSI", "probability PSI", "PSI bound"):
        assert name in html
    empty = trends_page("/b", [], [], [_batch("r1", "2026-03-01T10:00:00+00:00", None, [])], [])
    assert "Drift against the validation slices (PSI): no data yet." in empty
