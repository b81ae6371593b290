"""Hand-computed checks for brain_tumor.evaluation.metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brain_tumor.evaluation import metrics as m


def _square(y0: int, x0: int, size: int = 2, shape: tuple[int, int] = (6, 6)) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[y0 : y0 + size, x0 : x0 + size] = True
    return out


def test_perfect_predictor() -> None:
    r = m.classification_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.5)
    assert r["roc_auc"] == 1.0
    assert r["pr_auc"] == 1.0
    assert r["sensitivity"] == 1.0 and r["specificity"] == 1.0 and r["accuracy"] == 1.0
    assert r["confusion"] == {"tn": 2, "fp": 0, "fn": 0, "tp": 2}
    assert r["n"] == 4 and r["positives"] == 2


def test_inverted_predictor() -> None:
    r = m.classification_metrics([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.5)
    assert r["roc_auc"] == 0.0
    assert r["sensitivity"] == 0.0 and r["specificity"] == 0.0
    assert r["precision"] == 0.0 and r["f1"] == 0.0


def test_constant_predictor_and_threshold_behaviour() -> None:
    y, p = [0, 1, 0, 1], [0.5] * 4
    at = m.classification_metrics(y, p, 0.5)  # prob >= threshold is positive
    assert at["roc_auc"] == 0.5
    assert at["sensitivity"] == 1.0 and at["specificity"] == 0.0
    above = m.classification_metrics(y, p, 0.6)
    assert above["sensitivity"] == 0.0 and above["specificity"] == 1.0
    assert above["precision"] is None  # 0/0
    assert above["f1"] == 0.0


def test_known_confusion_matrix() -> None:
    y = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    p = [0.9, 0.8, 0.7, 0.2, 0.1, 0.6, 0.3, 0.2, 0.1, 0.05]
    r = m.classification_metrics(y, p, 0.5)
    assert r["confusion"] == {"tn": 4, "fp": 1, "fn": 2, "tp": 3}
    assert r["sensitivity"] == pytest.approx(0.6, abs=1e-12)
    assert r["specificity"] == pytest.approx(0.8, abs=1e-12)
    assert r["precision"] == pytest.approx(0.75, abs=1e-12)
    assert r["f1"] == pytest.approx(2 / 3, abs=1e-12)
    assert r["accuracy"] == pytest.approx(0.7, abs=1e-12)


def test_single_class_gives_none_and_is_json_ready() -> None:
    r = m.classification_metrics([0, 0, 0], [0.1, 0.7, 0.2], 0.5)
    assert r["roc_auc"] is None and r["pr_auc"] is None and r["sensitivity"] is None
    assert r["specificity"] == pytest.approx(2 / 3)
    assert "null" in json.dumps(r)
    only_pos = m.classification_metrics([1, 1], [0.2, 0.9], 0.5)
    assert only_pos["roc_auc"] is None and only_pos["specificity"] is None


def test_brier_and_ece_hand_example() -> None:
    r = m.classification_metrics([0, 1, 0, 1], [0.25, 0.25, 0.75, 0.75], 0.5)
    assert r["brier"] == pytest.approx(0.3125)
    assert r["ece"] == pytest.approx(0.25)  # both bins: |0.5 - 0.25| and |0.5 - 0.75|
    r2 = m.classification_metrics([0, 1, 1, 0], [0.1, 0.8, 0.6, 0.3], 0.5)
    assert r2["brier"] == pytest.approx(0.075)
    assert r2["ece"] == pytest.approx((0.1 + 0.2 + 0.4 + 0.3) / 4)


def test_calibration_curve_bins() -> None:
    c = m.calibration_curve_bins([0, 1, 0, 1, 1], [0.25, 0.25, 0.75, 0.75, 1.0], bins=4)
    assert c["bin_lower"] == [0.0, 0.25, 0.5, 0.75]
    assert c["count"] == [0, 2, 0, 3]  # 1.0 falls in the last bin
    assert c["mean_predicted"][0] is None
    assert c["fraction_positive"][1] == 0.5
    assert c["fraction_positive"][3] == pytest.approx(2 / 3)


def test_choose_threshold_separable_lands_between_classes() -> None:
    y = [0, 0, 0, 1, 1]
    p = [0.1, 0.2, 0.3, 0.6, 0.7]
    for rule in ("youden", "f1"):
        t = m.choose_threshold(y, p, rule=rule)
        assert 0.3 < t < 0.6, (rule, t)
        assert m.classification_metrics(y, p, t)["accuracy"] == 1.0


def test_choose_threshold_bad_input() -> None:
    with pytest.raises(ValueError, match="bogus"):
        m.choose_threshold([0, 1], [0.2, 0.8], rule="bogus")
    with pytest.raises(ValueError, match="both classes"):
        m.choose_threshold([1, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="within"):
        m.classification_metrics([0, 1], [0.2, 1.5], 0.5)
    with pytest.raises(ValueError, match="3 vs 2"):
        m.classification_metrics([0, 1, 1], [0.2, 0.5], 0.5)


def test_dice_iou_of_known_masks() -> None:
    a, b = _square(0, 0), _square(0, 1)  # overlap of 2 pixels
    assert m.dice(a, b) == 0.5
    assert m.iou(a, b) == pytest.approx(1 / 3)
    empty = np.zeros((6, 6), dtype=np.uint8)
    assert m.dice(empty, empty) == 1.0 and m.iou(empty, empty) == 1.0
    assert m.dice(a, empty) == 0.0
    assert m.dice(a.astype(np.uint8) * 255, b) == 0.5  # 0/255 masks as read from disk
    with pytest.raises(ValueError, match="threshold"):
        m.dice(a * 0.7, b)


def test_per_patient_dice_stacks_slices() -> None:
    t = np.zeros((3, 6, 6), dtype=bool)
    p = np.zeros_like(t)
    t[0] = _square(0, 0)  # 4 px, predicted exactly -> slice dice 1
    p[0] = _square(0, 0)
    t[1, 3, 3] = True  # 1 px, missed -> slice dice 0
    t[2] = _square(2, 2)  # another patient, perfect
    p[2] = _square(2, 2)
    out = m.per_patient_dice(["A", "A", "B"], t, p)
    assert out["A"] == pytest.approx(8 / 9)  # 2*4 / (5 + 4)
    assert np.mean([m.dice(t[0], p[0]), m.dice(t[1], p[1])]) == 0.5  # differs from stacking
    assert out["B"] == 1.0


def test_per_patient_dice_takes_slices_of_different_sizes() -> None:
    small, large = np.zeros((6, 6), bool), np.zeros((9, 9, 1), bool)
    small[:2, :2] = True
    large[:3, :3, 0] = True
    shifted = np.roll(large, 1, axis=0)  # 6 of 9 pixels overlap
    out = m.per_patient_dice(["A", "B"], [small, large], [small, shifted])
    assert out == {"A": 1.0, "B": pytest.approx(2 * 6 / 18)}
    with pytest.raises(ValueError, match=r"slice 1 \(patient B\).*native size"):
        m.per_patient_dice(["A", "B"], [small, large], [small, small])
    with pytest.raises(ValueError, match="2 patient ids for 1 slices"):
        m.per_patient_dice(["A", "B"], [small], [small])


def test_tumor_slice_dice_iou_ignores_empty_truth() -> None:
    t = np.zeros((3, 6, 6), dtype=bool)
    p = np.zeros_like(t)
    t[0], p[0] = _square(0, 0), _square(0, 1)  # dice 0.5, iou 1/3
    t[1], p[1] = _square(3, 3), _square(3, 3)  # dice 1, iou 1
    p[2] = _square(1, 1)  # empty truth: ignored
    d, j = m.tumor_slice_dice_iou(t, p)
    assert d == pytest.approx(0.75)
    assert j == pytest.approx((1 / 3 + 1) / 2)
    assert m.tumor_slice_dice_iou(t[2:], p[2:]) == (None, None)


def test_patient_detection_hand_example() -> None:
    ids = ["P1", "P1", "P1", "P2", "P2", "P3", "P3"]
    y = [0, 1, 1, 1, 0, 0, 0]
    pred = [1, 0, 1, 0, 0, 1, 1]
    r = m.patient_detection(ids, y, pred)
    assert r["detection_rate"] == 0.5  # P1 found, P2 missed, P3 has no tumor
    assert r["false_positive_slices_per_patient"] == pytest.approx(1.0)  # (1 + 0 + 2) / 3
    table = {row["patient_id"]: row for row in r["per_patient"]}
    assert table["P1"]["detected"] is True and table["P2"]["detected"] is False
    assert table["P3"]["detected"] is None and table["P3"]["false_positive_slices"] == 2
    json.dumps(r)


def test_bootstrap_ci_contains_estimate_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    ids = np.repeat([f"p{i}" for i in range(20)], 5)
    y = rng.integers(0, 2, ids.size)
    pred = np.where(rng.random(ids.size) < 0.8, y, 1 - y)

    def acc(idx: np.ndarray) -> float:
        return float(np.mean(y[idx] == pred[idx]))

    point = acc(np.arange(ids.size))
    low, high = m.bootstrap_ci(ids, acc, n_boot=300, seed=3)
    assert low is not None and high is not None
    assert low <= point <= high and low < high
    assert m.bootstrap_ci(ids, acc, n_boot=300, seed=3) == (low, high)
    assert m.bootstrap_ci(ids, acc, n_boot=300, seed=4) != (low, high)


def test_bootstrap_ci_skips_undefined() -> None:
    ids = ["a", "b", "c"]
    calls = []

    def sometimes(idx: np.ndarray) -> float | None:
        calls.append(1)
        return None if 0 in idx else 1.0

    low, high = m.bootstrap_ci(ids, sometimes, n_boot=50, seed=0)
    assert (low, high) == (1.0, 1.0) and len(calls) == 50
    assert m.bootstrap_ci(ids, lambda idx: None, n_boot=5) == (None, None)
    with pytest.raises(ValueError, match="alpha"):
        m.bootstrap_ci(ids, lambda idx: 1.0, alpha=1.5)


def test_ranking_metrics_follow_the_score_when_one_is_given() -> None:
    y = [0, 0, 1, 1]
    prob = [0.6, 0.1, 0.2, 0.9]  # the classifier ranks one negative above a positive
    score = [0.3, 0.1, 0.7, 0.9]  # the tumor score ranks them right
    r = m.classification_metrics(y, prob, 0.5, score=score)
    assert r["ranked_by"] == "tumor_score"
    assert r["roc_auc"] == 1.0 and r["pr_auc"] == 1.0
    assert r["roc_auc_classifier"] == 0.75
    assert r["brier"] == pytest.approx(np.mean((np.array(prob) - np.array(y)) ** 2))
    plain = m.classification_metrics(y, prob, 0.5)
    assert plain["ranked_by"] == "probability" and plain["roc_auc"] == 0.75
