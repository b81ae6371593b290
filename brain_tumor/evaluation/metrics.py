"""Evaluation metrics for slice classification and tumor segmentation (numpy + scikit-learn).

Conventions:
- A slice is predicted positive when ``prob >= threshold``, unless the final labels of a
  post-processing rule are given (``brain_tumor.scoring.postprocess``).
- Undefined values (AUC with one class present, 0/0 ratios) are ``None`` so that results
  serialize to JSON ``null`` instead of raising or producing NaN.
- Masks: nonzero (or True, or 1.0) is tumor; float masks must already be binarized.
- Dice/IoU of two empty masks is 1.0 (nothing to find, nothing found).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from brain_tumor.scoring.geometry import to_bool_mask

logger = logging.getLogger(__name__)

_RULES = ("youden", "f1")


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def _labels_probs(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true and prob differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size == 0:
        raise ValueError("y_true and prob are empty")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"y_true must hold only 0/1 labels, got values {np.unique(y)[:10]}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError(f"prob must be finite and within [0, 1], got range {p.min()}..{p.max()}")
    return y.astype(np.int64), p


def _confusion(y: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    return {
        "tn": int(np.sum((y == 0) & ~pred)),
        "fp": int(np.sum((y == 0) & pred)),
        "fn": int(np.sum((y == 1) & ~pred)),
        "tp": int(np.sum((y == 1) & pred)),
    }


def choose_threshold(y_true: Any, prob: Any, rule: str = "youden") -> float:
    """Pick a decision threshold on VALIDATION data only (never test data) by Youden's J or F1."""
    if rule not in _RULES:
        raise ValueError(f"rule must be one of {_RULES}, got {rule!r}")
    y, p = _labels_probs(y_true, prob)
    if y.min() == y.max():
        raise ValueError(
            f"choose_threshold needs both classes in the validation data, got only label {y[0]}"
        )
    scores = np.unique(p)
    # Candidates: all-positive, midpoints between distinct scores, all-negative.
    candidates = np.concatenate(
        [scores[:1], (scores[:-1] + scores[1:]) / 2.0, [np.nextafter(scores[-1], np.inf)]]
    )
    best_t, best_v = float(candidates[0]), -np.inf
    for t in candidates:
        c = _confusion(y, p >= t)
        if rule == "youden":
            value = c["tp"] / (c["tp"] + c["fn"]) + c["tn"] / (c["tn"] + c["fp"]) - 1.0
        else:
            value = _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"]) or 0.0
        if value > best_v:
            best_t, best_v = float(t), value
    logger.info("chose threshold %.4f by %s (score %.4f)", best_t, rule, best_v)
    return best_t


def _bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    return np.clip(np.floor(p * bins).astype(np.int64), 0, bins - 1)


def calibration_curve_bins(y_true: Any, prob: Any, bins: int = 10) -> dict[str, list[Any]]:
    """Equal-width reliability bins: edges, count, mean predicted prob, observed positive rate."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    y, p = _labels_probs(y_true, prob)
    idx = _bin_index(p, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    out: dict[str, list[Any]] = {
        "bin_lower": [float(e) for e in edges[:-1]],
        "bin_upper": [float(e) for e in edges[1:]],
        "count": [],
        "mean_predicted": [],
        "fraction_positive": [],
    }
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        out["count"].append(n)
        out["mean_predicted"].append(float(p[sel].mean()) if n else None)
        out["fraction_positive"].append(float(y[sel].mean()) if n else None)
    return out


def expected_calibration_error(y_true: Any, prob: Any, bins: int = 10) -> float:
    """ECE: count-weighted mean |observed rate - mean predicted| over equal-width bins."""
    curve = calibration_curve_bins(y_true, prob, bins)
    n = sum(curve["count"])
    return float(
        sum(
            c / n * abs(fp - mp)
            for c, fp, mp in zip(
                curve["count"], curve["fraction_positive"], curve["mean_predicted"], strict=True
            )
            if c
        )
    )


def classification_metrics(y_true: Any, prob: Any, threshold: float,
                           label: Any | None = None, score: Any | None = None) -> dict[str, Any]:
    """Slice-level metrics (JSON-ready; undefined values are None): the ranking ones from
    `score` when given (``roc_auc_classifier`` then from `prob` alone), else from `prob`; the
    counting ones from the final `label` when given, else from prob >= threshold; the
    calibration ones (Brier, ECE) from `prob`."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {threshold}")
    y, p = _labels_probs(y_true, prob)
    if label is None:
        pred = p >= threshold
    else:
        pred = np.asarray(label).ravel().astype(bool)
        if pred.shape != y.shape:
            raise ValueError(f"label and y_true differ in length: {pred.size} vs {y.size}")
    rank = p
    if score is not None:
        _, rank = _labels_probs(y_true, score)
    c = _confusion(y, pred)
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    both = 0 < y.sum() < y.size
    return {
        "threshold": float(threshold),
        "n": int(y.size),
        "positives": int(y.sum()),
        "ranked_by": "probability" if score is None else "tumor_score",
        "roc_auc": float(roc_auc_score(y, rank)) if both else None,
        "roc_auc_classifier": float(roc_auc_score(y, p)) if both else None,
        "pr_auc": float(average_precision_score(y, rank)) if y.sum() > 0 else None,
        "accuracy": _ratio(tp + tn, y.size),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "confusion": c,
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(y, p, bins=10),
    }


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice 2|A∩B|/(|A|+|B|) of two binary masks; 1.0 when both are empty (by convention)."""
    x, y = to_bool_mask(a, "a"), to_bool_mask(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"mask shapes differ: {x.shape} vs {y.shape}")
    den = int(x.sum()) + int(y.sum())
    return 1.0 if den == 0 else 2.0 * int(np.sum(x & y)) / den


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU |A∩B|/|A∪B| of two binary masks; 1.0 when both are empty (by convention)."""
    x, y = to_bool_mask(a, "a"), to_bool_mask(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"mask shapes differ: {x.shape} vs {y.shape}")
    union = int(np.sum(x | y))
    return 1.0 if union == 0 else int(np.sum(x & y)) / union


def mask_pairs(true_masks: Sequence[Any], pred_masks: Sequence[Any],
               patient_ids: Sequence[Any] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(true, predicted) boolean 2-D masks per slice; slices may differ in size, a pair may not."""
    if len(true_masks) != len(pred_masks):
        raise ValueError(f"{len(true_masks)} true masks but {len(pred_masks)} predicted masks")
    if patient_ids is not None and len(patient_ids) != len(true_masks):
        raise ValueError(f"{len(patient_ids)} patient ids for {len(true_masks)} slices")
    pairs = []
    for i, (t, q) in enumerate(zip(true_masks, pred_masks, strict=True)):
        tb, qb = to_bool_mask(t, "true_mask"), to_bool_mask(q, "pred_mask")
        if tb.ndim == 3 and tb.shape[-1] == 1:
            tb = tb[..., 0]
        if qb.ndim == 3 and qb.shape[-1] == 1:
            qb = qb[..., 0]
        where = f"slice {i}" if patient_ids is None else f"slice {i} (patient {patient_ids[i]})"
        if tb.ndim != 2:
            raise ValueError(f"{where}: masks must be 2-D (H, W[, 1]), received shape {tb.shape}")
        if tb.shape != qb.shape:
            raise ValueError(f"{where}: predicted mask {qb.shape} differs from the true mask "
                             f"{tb.shape}; resize predictions back to native size first")
        pairs.append((tb, qb))
    return pairs


def per_patient_dice(
    patient_ids: Sequence[Any], true_masks: Sequence[Any], pred_masks: Sequence[Any]
) -> dict[str, float]:
    """Dice per patient over all of its slices stacked as one volume (Buda et al. 2019)."""
    pairs = mask_pairs(true_masks, pred_masks, patient_ids)
    ids = np.asarray([str(x) for x in patient_ids])
    out: dict[str, float] = {}
    for pid in dict.fromkeys(ids):  # first-seen order
        sel = np.flatnonzero(ids == pid)
        t = np.concatenate([pairs[i][0].ravel() for i in sel])
        q = np.concatenate([pairs[i][1].ravel() for i in sel])
        out[str(pid)] = dice(t, q)
    return out


def tumor_slice_dice_iou(
    true_masks: Sequence[Any], pred_masks: Sequence[Any]
) -> tuple[float | None, float | None]:
    """Mean per-slice Dice and IoU over slices whose TRUE mask is non-empty; None if none are."""
    keep = [(t, q) for t, q in mask_pairs(true_masks, pred_masks) if t.any()]
    if not keep:
        return None, None
    return (
        float(np.mean([dice(t, q) for t, q in keep])),
        float(np.mean([iou(t, q) for t, q in keep])),
    )


def patient_detection(patient_ids: Sequence[Any], y_true: Any, pred_label: Any) -> dict[str, Any]:
    """Patient-level detection rate, false-positive slices per patient and the per-patient table."""
    y = np.asarray(y_true).ravel().astype(bool)
    pred = np.asarray(pred_label).ravel().astype(bool)
    if not (len(patient_ids) == y.size == pred.size):
        raise ValueError(
            f"lengths differ: {len(patient_ids)} patient ids, {y.size} labels, "
            f"{pred.size} predictions"
        )
    if y.size == 0:
        raise ValueError("no slices given")
    ids = np.asarray([str(x) for x in patient_ids])
    rows = []
    for pid in dict.fromkeys(ids):
        sel = ids == pid
        has_tumor = bool(y[sel].any())
        rows.append(
            {
                "patient_id": str(pid),
                "slices": int(sel.sum()),
                "tumor_slices": int(y[sel].sum()),
                "predicted_tumor_slices": int(pred[sel].sum()),
                "false_positive_slices": int(np.sum(pred[sel] & ~y[sel])),
                "detected": bool(pred[sel].any()) if has_tumor else None,
            }
        )
    with_tumor = [r for r in rows if r["detected"] is not None]
    return {
        "patients": len(rows),
        "patients_with_tumor": len(with_tumor),
        "detection_rate": _ratio(sum(r["detected"] for r in with_tumor), len(with_tumor)),
        "false_positive_slices_per_patient": float(
            np.mean([r["false_positive_slices"] for r in rows])
        ),
        "per_patient": rows,
    }


def bootstrap_ci(
    patient_ids: Sequence[Any],
    metric_fn: Callable[[np.ndarray], float | None],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float | None, float | None]:
    """Percentile CI from resampling PATIENTS with replacement; metric_fn(indices) -> float | None.

    A drawn patient contributes all of its slice indices (repeated if drawn twice). Resamples
    where metric_fn returns None/NaN are skipped; (None, None) if every resample was undefined.
    A metric_fn that regroups slices by patient id collapses a patient drawn twice into one
    group; to bootstrap a per-patient mean, pass one id per patient and index an array of
    per-patient values instead.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    ids = np.asarray([str(x) for x in patient_ids])
    if ids.size == 0:
        raise ValueError("patient_ids is empty")
    unique = list(dict.fromkeys(ids))
    groups = [np.flatnonzero(ids == u) for u in unique]
    rng = np.random.default_rng(seed)
    stats: list[float] = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(groups), size=len(groups))
        value = metric_fn(np.concatenate([groups[i] for i in drawn]))
        if value is None or not np.isfinite(value):
            continue
        stats.append(float(value))
    skipped = n_boot - len(stats)
    if skipped:
        logger.info("bootstrap: skipped %d of %d resamples (undefined metric)", skipped, n_boot)
    if not stats:
        return None, None
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)
