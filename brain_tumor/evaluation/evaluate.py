"""Evaluation of a classifier + segmenter on the test patients: the ``metrics`` record.

Pure functions on arrays (no S3, no Keras). Provenance of the decision threshold: training
chooses it on VALIDATION patients only (``metrics.choose_threshold``, stored in model.json);
``evaluate`` takes it as an argument and never looks at test labels to choose or adjust it.
Masks are compared at their native resolution (predicted masks must already be resized back to
the slice's size). Sensitivity, specificity, detection and false positives count the final
labels of the model's post-processing when ``Predictions.label`` holds them (the same rule
scoring runs, ``brain_tumor.scoring.postprocess``); ROC-AUC, PR-AUC and calibration rank the
classifier's probabilities. Bootstrap intervals resample PATIENTS, never slices; which metrics
get one is the catalog's ``interval`` flag.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from brain_tumor.evaluation import metrics as m
from brain_tumor.evaluation.catalog import INTERVAL_METRICS
from brain_tumor.store.schemas import validate_record

logger = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Per-slice labels, probabilities and native-size masks of one split."""

    patient_ids: np.ndarray  # N str
    y_true: np.ndarray  # N 0/1 slice labels
    prob: np.ndarray  # N classifier probabilities
    true_masks: list[np.ndarray] | np.ndarray  # N native-size boolean masks
    pred_masks: list[np.ndarray] | np.ndarray  # N predicted masks at the SAME native size
    slice_index: np.ndarray | None = None
    label: np.ndarray | None = None  # N final labels of the post-processing (None: prob rule)
    score: np.ndarray | None = None  # N tumor scores that rank slices (None: prob)

    def __post_init__(self) -> None:
        self.patient_ids = np.asarray([str(x) for x in np.asarray(self.patient_ids).ravel()])
        self.y_true = np.asarray(self.y_true).ravel().astype(np.int64)
        self.prob = np.asarray(self.prob, dtype=np.float64).ravel()
        n = self.patient_ids.size
        sizes = {
            "y_true": self.y_true.size,
            "prob": self.prob.size,
            "true_masks": len(self.true_masks),
            "pred_masks": len(self.pred_masks),
        }
        if self.slice_index is not None:
            self.slice_index = np.asarray(self.slice_index).ravel().astype(np.int64)
            sizes["slice_index"] = self.slice_index.size
        if self.label is not None:
            self.label = np.asarray(self.label).ravel().astype(np.int64)
            sizes["label"] = self.label.size
        if self.score is not None:
            self.score = np.asarray(self.score, dtype=np.float64).ravel()
            sizes["score"] = self.score.size
        bad = {k: v for k, v in sizes.items() if v != n}
        if bad:
            raise ValueError(f"{n} patient ids but lengths differ: {bad}")
        if n == 0:
            raise ValueError("Predictions is empty")

    def __len__(self) -> int:
        return int(self.patient_ids.size)

    def pred_label(self, threshold: float) -> np.ndarray:
        """Slice predictions: the post-processing's final labels, else prob >= threshold."""
        if self.label is not None:
            return self.label != 0
        return self.prob >= threshold

    def ranking_score(self) -> np.ndarray:
        """What ranks slices for the ROC and PR curves: the tumor score, else the probability."""
        return self.prob if self.score is None else self.score


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC-AUC by the Mann-Whitney U statistic (ties count half); None with one class."""
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return None
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _rate(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def _intervals(
    test: Predictions,
    pred: np.ndarray,
    dice_by_patient: dict[str, float],
    detection: dict[str, Any],
    n_boot: int,
    seed: int,
) -> dict[str, list[float] | None]:
    y, p, ids = test.y_true, test.ranking_score(), test.patient_ids
    rows = detection["per_patient"]
    pids = np.asarray([r["patient_id"] for r in rows])  # one id per patient, first-seen order
    dice_arr = np.asarray([dice_by_patient[str(pid)] for pid in pids])
    detected = np.asarray(
        [np.nan if r["detected"] is None else float(r["detected"]) for r in rows]
    )
    fp_arr = np.asarray([float(r["false_positive_slices"]) for r in rows])

    def detection_rate(idx: np.ndarray) -> float | None:
        d = detected[idx]
        d = d[~np.isnan(d)]
        return float(d.mean()) if d.size else None

    slice_fns = {
        "roc_auc": lambda idx: _auc(y[idx], p[idx]),
        "sensitivity": lambda idx: _rate(np.sum(pred[idx] & (y[idx] == 1)), np.sum(y[idx] == 1)),
        "specificity": lambda idx: _rate(np.sum(~pred[idx] & (y[idx] == 0)), np.sum(y[idx] == 0)),
    }
    patient_fns = {
        # per-patient arrays indexed by patient, so a patient drawn twice counts twice
        "dice_per_patient_mean": lambda idx: float(dice_arr[idx].mean()),
        "detection_rate": detection_rate,
        "false_positive_slices_per_patient": lambda idx: float(fp_arr[idx].mean()),
    }
    out: dict[str, list[float] | None] = {}
    for name in INTERVAL_METRICS:
        if name in slice_fns:
            lo, hi = m.bootstrap_ci(ids, slice_fns[name], n_boot=n_boot, seed=seed)
        elif name in patient_fns:
            lo, hi = m.bootstrap_ci(pids, patient_fns[name], n_boot=n_boot, seed=seed)
        else:
            known = sorted({**slice_fns, **patient_fns})
            raise ValueError(f"the catalog gives {name!r} an interval, but no bootstrap "
                             f"statistic computes it; known: {known}")
        out[name] = None if lo is None or hi is None else [lo, hi]
    return out


def _localization(test: Predictions) -> dict[str, Any]:
    """The localization section: Dice per patient (stacked slices) and on tumor slices."""
    pairs = m.mask_pairs(test.true_masks, test.pred_masks, test.patient_ids)
    true, pred = [t for t, _ in pairs], [q for _, q in pairs]
    dice_by_patient = m.per_patient_dice(test.patient_ids, true, pred)
    dice_values = list(dice_by_patient.values())
    ts_dice, ts_iou = m.tumor_slice_dice_iou(true, pred)
    return {
        "dice_per_patient_mean": float(np.mean(dice_values)),
        "dice_per_patient_median": float(np.median(dice_values)),
        "dice_per_patient": dice_by_patient,
        "tumor_slice_dice": ts_dice,
        "tumor_slice_iou": ts_iou,
    }


def evaluate(
    test: Predictions,
    threshold: float,
    *,
    model_version: str,
    dataset_version: str,
    threshold_source: str = "validation",
    n_boot: int = 1000,
    seed: int = 0,
    postprocess: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The schema-valid ``metrics`` record of `test` at a threshold chosen elsewhere (validation).

    Test labels are never used to choose or adjust `threshold`; it comes from the model
    (chosen on validation patients at training time); threshold_source='test' is refused.
    ``postprocess`` ({rule, params}) names the rule that made ``test.label`` and the masks.
    """
    if threshold_source.strip().lower() == "test":
        raise ValueError("the threshold must not be chosen on test labels (source 'test')")
    threshold = float(threshold)
    pred = test.pred_label(threshold)
    cls = m.classification_metrics(test.y_true, test.prob, threshold, label=pred,
                                   score=test.score)
    calibration = {
        "brier": cls.pop("brier"),
        "ece": cls.pop("ece"),
        "curve": m.calibration_curve_bins(test.y_true, test.prob, bins=10),
    }
    localization = _localization(test)
    detection = m.patient_detection(test.patient_ids, test.y_true, pred)
    intervals = _intervals(test, pred, localization["dice_per_patient"], detection, n_boot, seed)
    record: dict[str, Any] = {
        "model_version": model_version,
        "dataset_version": dataset_version,
        "threshold": threshold,
        "threshold_source": threshold_source,
        "postprocess": postprocess,
        "slice": cls,
        "calibration": calibration,
        "localization": localization,
        "patient": detection,
        "intervals": intervals,
        "bootstrap": {"unit": "patient", "level": 0.95, "n_boot": int(n_boot), "seed": int(seed)},
        "counts": {
            "patients": int(detection["patients"]),
            "slices": len(test),
            "tumor_slices": int(test.y_true.sum()),
        },
    }
    logger.info(
        "evaluated %s on %d test patients / %d slices: auc=%s sens=%s dice=%.3f",
        model_version, detection["patients"], len(test), cls["roc_auc"], cls["sensitivity"],
        localization["dice_per_patient_mean"],
    )
    return validate_record("metrics", record)
