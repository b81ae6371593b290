"""evaluation.evaluate and evaluation.report on small hand-built and synthetic predictions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from brain_tumor.evaluation import catalog, report
from brain_tumor.evaluation import evaluate as ev
from brain_tumor.evaluation.evaluate import Predictions, evaluate
from brain_tumor.evaluation.metrics import choose_threshold
from brain_tumor.store.schemas import validate_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _box(y0: int, x0: int, h: int, w: int, shape: tuple[int, int] = (8, 8)) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[y0 : y0 + h, x0 : x0 + w] = True
    return out


def _empty(shape: tuple[int, int] = (8, 8)) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


def _synthetic(patients: int = 3, slices: int = 4, size: int = 32, seed: int = 0,
               noise: float = 0.25) -> Predictions:
    """Each patient: the middle slices hold a square tumor; predictions are jittered copies."""
    rng = np.random.default_rng(seed)
    ids, y, prob, true, pred = [], [], [], [], []
    for p in range(patients):
        has_tumor = p % 4 != 3  # every fourth patient has no tumor
        for s in range(slices):
            tumor = has_tumor and 0 < s < slices - 1
            t = _box(8, 8, 10, 10, (size, size)) if tumor else _empty((size, size))
            shift = int(rng.integers(0, 4))
            q = _box(8 + shift, 8, 10, 10, (size, size)) if tumor else _empty((size, size))
            ids.append(f"P{p:02d}")
            y.append(int(tumor))
            prob.append(float(np.clip((0.75 if tumor else 0.25) + rng.normal(0, noise), 0, 1)))
            true.append(t)
            pred.append(q)
    return Predictions(np.array(ids), np.array(y), np.array(prob), true, pred,
                       slice_index=np.tile(np.arange(slices), patients))


def _perfect() -> Predictions:
    test = _synthetic(patients=4, slices=4, size=16)
    test.prob = np.where(test.y_true == 1, 0.9, 0.1)
    test.pred_masks = [m.copy() for m in test.true_masks]
    return test


def _hand() -> Predictions:
    """Three patients checked by hand (see test_known_case)."""
    ids = ["A", "A", "A", "B", "B", "C", "C"]
    y = [1, 1, 0, 1, 0, 0, 0]
    prob = [0.9, 0.3, 0.2, 0.7, 0.6, 0.8, 0.1]
    true = [_box(0, 0, 2, 2), _box(4, 0, 4, 3), _empty(), _box(0, 0, 2, 2), _empty(),
            _empty(), _empty()]
    pred = [_box(0, 0, 2, 2), _empty(), _empty(), _box(0, 1, 2, 2), _empty(),
            _box(5, 5, 2, 2), _empty()]
    return Predictions(np.array(ids), np.array(y), np.array(prob), true, pred)


def _run(test: Predictions, threshold: float = 0.5, **kw) -> dict:
    return evaluate(test, threshold, model_version="m-1", dataset_version="ds-1", n_boot=200, **kw)


def test_perfect_predictor() -> None:
    r = _run(_perfect())
    assert r["slice"]["sensitivity"] == 1.0 and r["slice"]["specificity"] == 1.0
    assert r["slice"]["roc_auc"] == 1.0
    assert r["localization"]["dice_per_patient_mean"] == 1.0
    assert r["localization"]["tumor_slice_dice"] == 1.0
    assert r["patient"]["detection_rate"] == 1.0
    assert r["patient"]["false_positive_slices_per_patient"] == 0.0
    assert r["intervals"]["roc_auc"] == [1.0, 1.0]
    assert r["intervals"]["false_positive_slices_per_patient"] == [0.0, 0.0]
    assert r["counts"] == {"patients": 4, "slices": 16, "tumor_slices": 6}


def test_inverted_predictor() -> None:
    test = _perfect()
    test.prob = 1.0 - test.prob
    test.pred_masks = [np.zeros_like(m) for m in test.true_masks]
    r = _run(test)
    assert r["slice"]["roc_auc"] == 0.0
    assert r["slice"]["sensitivity"] == 0.0 and r["slice"]["specificity"] == 0.0
    # tumor patients score 0, the tumor-free patient (nothing to find, nothing found) 1
    assert r["localization"]["dice_per_patient"] == {"P00": 0.0, "P01": 0.0, "P02": 0.0,
                                                     "P03": 1.0}
    assert r["localization"]["tumor_slice_dice"] == 0.0
    # every non-tumor slice is flagged: 2 per tumor patient, 4 for the tumor-free one
    assert r["patient"]["false_positive_slices_per_patient"] == pytest.approx(10 / 4)
    # patient detection counts any flagged slice of a tumor patient, even a wrong one
    assert r["patient"]["detection_rate"] == 1.0


def test_known_case() -> None:
    r = _run(_hand())
    loc = r["localization"]
    # A: stacked |T|=4+12, |P|=4, overlap 4 -> 8/20; B: 2*2/8; C: no tumor, 4 px predicted -> 0
    assert loc["dice_per_patient"] == pytest.approx({"A": 0.4, "B": 0.5, "C": 0.0})
    assert loc["dice_per_patient_mean"] == pytest.approx(0.3)
    assert loc["dice_per_patient_median"] == pytest.approx(0.4)
    # tumor slices A0 (1, 1), A1 (0, 0), B0 (0.5, 2/6)
    assert loc["tumor_slice_dice"] == pytest.approx(0.5)
    assert loc["tumor_slice_iou"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert r["slice"]["sensitivity"] == pytest.approx(2 / 3)
    assert r["slice"]["specificity"] == pytest.approx(0.5)
    assert r["slice"]["confusion"] == {"tn": 2, "fp": 2, "fn": 1, "tp": 2}
    assert r["patient"]["detection_rate"] == 1.0
    assert r["patient"]["false_positive_slices_per_patient"] == pytest.approx(2 / 3)
    assert r["counts"] == {"patients": 3, "slices": 7, "tumor_slices": 3}


def _contains(ci: list[float] | None, value: float | None) -> bool:
    return ci is None if value is None else ci[0] - 1e-12 <= value <= ci[1] + 1e-12


@pytest.mark.parametrize("make", [_hand, lambda: _synthetic(patients=20, slices=6, seed=3)])
def test_intervals_contain_point_estimates(make) -> None:
    r = _run(make())
    point = {
        "roc_auc": r["slice"]["roc_auc"],
        "sensitivity": r["slice"]["sensitivity"],
        "specificity": r["slice"]["specificity"],
        "dice_per_patient_mean": r["localization"]["dice_per_patient_mean"],
        "detection_rate": r["patient"]["detection_rate"],
        "false_positive_slices_per_patient": r["patient"]["false_positive_slices_per_patient"],
    }
    assert set(r["intervals"]) == set(point) == set(catalog.INTERVAL_METRICS)
    for name, value in point.items():
        assert _contains(r["intervals"][name], value), (name, value, r["intervals"][name])
        if r["intervals"][name] is not None:
            assert r["intervals"][name][0] <= r["intervals"][name][1]


def test_fast_auc_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200), 1)  # many ties
    assert ev._auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert ev._auc(np.ones(3, int), np.array([0.1, 0.2, 0.3])) is None


def test_record_is_json_and_schema_valid() -> None:
    r = _run(_hand())
    text = json.dumps(r, allow_nan=False)
    back = json.loads(text)
    validate_record("metrics", back)
    for key in ("threshold_source", "counts", "intervals", "calibration"):
        assert key in back
    assert back["calibration"]["curve"]["count"] and "ece" in back["calibration"]
    assert all(isinstance(v, float) and math.isfinite(v)
               for v in back["localization"]["dice_per_patient"].values())


def test_undefined_values_are_null() -> None:
    test = _perfect()
    keep = test.y_true == 0  # no tumor slices at all
    only_neg = Predictions(test.patient_ids[keep], test.y_true[keep], test.prob[keep],
                           [m for m, k in zip(test.true_masks, keep, strict=True) if k],
                           [m for m, k in zip(test.pred_masks, keep, strict=True) if k])
    r = _run(only_neg)
    assert r["slice"]["roc_auc"] is None and r["intervals"]["roc_auc"] is None
    assert r["patient"]["detection_rate"] is None
    json.dumps(r, allow_nan=False)


def test_mask_size_mismatch_is_rejected() -> None:
    test = _hand()
    test.pred_masks[0] = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match="native size"):
        _run(test)


def test_threshold_comes_from_validation_only() -> None:
    prob = np.linspace(0.05, 0.95, 10)
    masks = [_empty() for _ in prob]
    ids = np.repeat(["V1", "V2"], 5)
    val = Predictions(ids, (prob > 0.5).astype(int), prob, masks, masks)
    test = _synthetic(patients=6, slices=5, seed=12)
    t = choose_threshold(val.y_true, val.prob)
    assert t == pytest.approx(0.5)  # midpoint between 0.45 and 0.55
    flipped = Predictions(test.patient_ids, 1 - test.y_true, test.prob, test.true_masks,
                          test.pred_masks)
    r1, r2 = _run(test, t), _run(flipped, t)
    assert r1["threshold"] == r2["threshold"] == t
    assert r1["threshold_source"] == "validation"
    assert r1["slice"]["sensitivity"] != r2["slice"]["sensitivity"]  # test labels did change
    # changing validation labels moves the threshold
    val2 = Predictions(ids, (prob > 0.75).astype(int), prob, masks, masks)
    assert choose_threshold(val2.y_true, val2.prob) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="test labels"):
        _run(test, t, threshold_source="test")


def test_write_plots(tmp_path) -> None:
    test = _synthetic(patients=3, slices=4, size=32)
    metrics = _run(test)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (len(test), 32, 32, 3), dtype=np.uint8)
    paths = report.write_plots(metrics, test, tmp_path / "plots", images=images, max_grid=6)
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{n}.png" for n in report.PLOTS)
    for p in paths:
        data = p.read_bytes()
        assert p.parent == tmp_path / "plots" and len(data) > 1000
        assert data[:8] == PNG_MAGIC
    assert report.write_plots(metrics, test, tmp_path / "noimg")  # images are optional


def test_pick_slices_prefers_tumor_and_false_positives() -> None:
    test = _hand()
    picked = report._pick_slices(test, 0.5, 4)
    # tumor slices: each patient's largest first (A1 12 px, B0 4 px, then A0), interleaved with
    # false positives by probability (C0 0.8, B1 0.6)
    assert picked == [1, 5, 3, 4]
    assert report._pick_slices(test, 0.5, 10) == [1, 5, 3, 4, 0, 2, 6]


def test_model_card() -> None:
    metrics = _run(_hand())
    card = report.model_card(
        metrics, model_version="m-1", dataset_version="ds-1",
        config={"backbone": "resnet50", "image_size": 256, "weights": None,
                "code_version": "0.1.0"},
        split_counts={"train": {"patients": 70, "slices": 2700, "tumor_slices": 900},
                      "val": {"patients": 15, "slices": 600, "tumor_slices": 200},
                      "test": metrics["counts"]},
    )
    assert report.INTENDED_USE in card and "not a diagnostic device" in card
    assert "| Dice per patient, mean | 0.300 |" in card
    assert "| Sensitivity (slice) | 0.667 |" in card
    assert "| ROC-AUC (slice) | " + report._fmt(metrics["slice"]["roc_auc"]) in card
    assert "plots/roc.png" in card and "plots/slices.png" in card
    assert "ds-1" in card and "m-1" in card and "0.1.0" in card and "| train | 70 |" in card
    assert "ImageNet" in card and "n/a" not in card.split("## Metrics")[0].split("## Data")[0]
    assert "nan" not in card.lower()
    rows = [line for line in card.split("## Metrics")[1].split("## Limits")[0].splitlines()
            if line.startswith("| ") and not line.startswith(("| metric", "| ---"))]
    assert [r.split(" | ")[0][2:] for r in rows] == [m.label for m in catalog.METRICS]
    with_ci = {r.split(" | ")[0][2:] for r in rows if r.split(" | ")[2].startswith("[")}
    assert with_ci == {m.label for m in catalog.METRICS if m.interval}
    assert report._fmt(None) == "n/a" and report._fmt(0.12345) == "0.123"
