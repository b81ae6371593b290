"""Post-processing parameters chosen on the validation patients, and the post-processing ablation.

``tune`` tries a small grid of the two parameters of the whole-study rule
(``brain_tumor.scoring.postprocess.WholeStudy``): the segmenter's ``mask_threshold`` and the
minimum slice-mask area ``min_area_fraction``; the share of the largest 3D component another
one needs to be kept (``keep_fraction``) stays fixed. It keeps the pair with the highest mean
per-patient Dice among those whose slice sensitivity reaches a floor and whose false-positive
slices per patient stay under a ceiling (both counted from the rule's final labels); when no
pair meets both, the pair closest to meeting them (fewest constraints failed, then Dice).
It accepts the validation split only: the test patients never choose a parameter.

Figures are computed at the model's input size (the masks of ``load_arrays``), through the same
rule and grouping (``postprocess_groups``) as evaluation and scoring.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from brain_tumor.evaluation import metrics as m
from brain_tumor.scoring.postprocess import (
    ArrayRule,
    SliceThreshold,
    WholeStudy,
    postprocess_groups,
    tumor_score,
)
from brain_tumor.settings import Settings

log = logging.getLogger(__name__)

#: the grid tried on validation patients
MASK_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_AREA_FRACTIONS = (0.0, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3)
KEEP_FRACTION = 0.1
TUNED = ("mask_threshold", "min_area_fraction")


@dataclass
class SplitOutputs:
    """A model's raw outputs on the slices of one split, beside the truth (model size)."""

    split: str  # val | test
    patient_ids: np.ndarray  # N str
    slice_index: np.ndarray  # N int
    y_true: np.ndarray  # N 0/1
    prob: np.ndarray  # N classifier probabilities
    maps: np.ndarray  # N x S x S segmenter probability maps
    true_masks: np.ndarray  # N x S x S true masks at the same size

    def __post_init__(self) -> None:
        self.patient_ids = np.asarray([str(x) for x in np.asarray(self.patient_ids).ravel()])
        self.slice_index = np.asarray(self.slice_index).ravel().astype(np.int64)
        self.y_true = np.asarray(self.y_true).ravel().astype(np.int64)
        self.prob = np.asarray(self.prob, dtype=np.float64).ravel()
        self.maps = np.asarray(self.maps)
        self.true_masks = np.asarray(self.true_masks) != 0
        if self.maps.ndim == 4 and self.maps.shape[-1] == 1:
            self.maps = self.maps[..., 0]
        if self.true_masks.ndim == 4 and self.true_masks.shape[-1] == 1:
            self.true_masks = self.true_masks[..., 0]
        n = self.patient_ids.size
        sizes = {"slice_index": self.slice_index.size, "y_true": self.y_true.size,
                 "prob": self.prob.size, "maps": len(self.maps),
                 "true_masks": len(self.true_masks)}
        bad = {k: v for k, v in sizes.items() if v != n}
        if bad or n == 0:
            raise ValueError(f"{n} patient ids but lengths differ (or no slices): {bad}")
        if self.maps.shape[1:] != self.true_masks.shape[1:]:
            raise ValueError(f"maps {self.maps.shape[1:]} and true masks "
                             f"{self.true_masks.shape[1:]} differ in size")


def split_outputs(data: Any, prob: np.ndarray, maps: np.ndarray) -> SplitOutputs:
    """SplitOutputs of an ``ArrayDataset`` holding one split's slices and its predictions."""
    splits = sorted({str(s) for s in np.asarray(data.splits)})
    if len(splits) != 1:
        raise ValueError(f"the slices must come from one split, received splits {splits}")
    return SplitOutputs(splits[0], data.patient_ids, data.slice_index, data.labels, prob, maps,
                        data.masks)


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def figures(rule: ArrayRule, out: SplitOutputs, threshold: float) -> dict[str, Any]:
    """Per-patient Dice, slice sensitivity/specificity, false positives and detection of a rule."""
    size = out.maps.shape[1:]
    label, masks, summaries = postprocess_groups(
        rule, out.prob, out.maps, [size] * len(out.prob), out.patient_ids, out.slice_index,
        threshold)
    dice = list(m.per_patient_dice(out.patient_ids, list(out.true_masks), masks).values())
    pred = label.astype(bool)
    y = out.y_true.astype(bool)
    detection = m.patient_detection(out.patient_ids, out.y_true, pred)
    return {
        "dice_per_patient_mean": float(np.mean(dice)),
        "dice_per_patient_median": float(np.median(dice)),
        "sensitivity": _ratio(int(np.sum(pred & y)), int(y.sum())),
        "specificity": _ratio(int(np.sum(~pred & ~y)), int((~y).sum())),
        "false_positive_slices_per_patient": detection["false_positive_slices_per_patient"],
        "detection_rate": detection["detection_rate"],
        "components_dropped": int(sum(s.get("components_dropped", 0) for s in summaries.values())),
        "patients": int(detection["patients"]),
    }


def _failed(fig: dict[str, Any], min_sensitivity: float, max_fp: float) -> int:
    sens = fig["sensitivity"]
    return int(sens is not None and sens < min_sensitivity) + int(
        fig["false_positive_slices_per_patient"] > max_fp)


def tune(out: SplitOutputs, threshold: float, *, min_sensitivity: float,
         max_fp_per_patient: float, mask_thresholds: Sequence[float] = MASK_THRESHOLDS,
         min_area_fractions: Sequence[float] = MIN_AREA_FRACTIONS,
         keep_fraction: float = KEEP_FRACTION) -> dict[str, Any]:
    """The whole-study rule's two parameters chosen on validation patients: model.json's
    ``postprocess`` field {rule, params, tuned, tuned_on, objective, constraints, grid}."""
    if out.split != "val":
        raise ValueError("post-processing is tuned on the validation patients only, received "
                         f"the {out.split!r} split")
    if not mask_thresholds or not min_area_fractions:
        raise ValueError(f"empty grid: mask_thresholds {list(mask_thresholds)}, "
                         f"min_area_fractions {list(min_area_fractions)}")
    candidates = []
    for mt in mask_thresholds:
        for ma in min_area_fractions:
            rule = WholeStudy(float(mt), float(ma), keep_fraction)
            fig = figures(rule, out, threshold)
            failed = _failed(fig, min_sensitivity, max_fp_per_patient)
            key = (-failed, fig["dice_per_patient_mean"],
                   -fig["false_positive_slices_per_patient"])
            candidates.append((key, rule, fig, failed))
    _, rule, fig, failed = max(candidates, key=lambda c: c[0])
    log.info("post-processing tuned on %d validation patients: %s -> Dice %.3f, sensitivity %s, "
             "%.2f false-positive slices per patient%s", fig["patients"], rule.params(),
             fig["dice_per_patient_mean"], fig["sensitivity"],
             fig["false_positive_slices_per_patient"],
             "" if failed == 0 else " (constraints not met)")
    return {
        "rule": rule.name, "params": rule.params(), "tuned": list(TUNED), "tuned_on": "validation",
        "min_sensitivity": float(min_sensitivity),
        "max_fp_per_patient": float(max_fp_per_patient),
        "constraints_met": failed == 0,
        "objective": {k: fig[k] for k in ("dice_per_patient_mean", "sensitivity", "specificity",
                                          "false_positive_slices_per_patient")},
        "grid": {"mask_threshold": [float(x) for x in mask_thresholds],
                 "min_area_fraction": [float(x) for x in min_area_fractions]},
        "validation_patients": fig["patients"],
    }


def tune_on_validation(val: Any, val_prob: np.ndarray, segmenter: Any, threshold: float,
                       settings: Settings) -> dict[str, Any]:
    """Predict the validation slices' maps with the segmenter and tune the post-processing."""
    maps = np.asarray(segmenter.predict(np.asarray(val.segmenter_images(), dtype=np.float32),
                                        batch_size=settings.batch_size, verbose=0))
    out = split_outputs(val, np.asarray(val_prob).reshape(-1), maps)
    return tune(out, threshold, min_sensitivity=settings.postprocess_min_sensitivity,
                max_fp_per_patient=settings.postprocess_max_fp_per_patient)


def ablation_rules(params: dict[str, Any], legacy_mask_threshold: float = 0.5,
                   ) -> dict[str, ArrayRule]:
    """The rules the ablation compares, around the tuned whole-study parameters."""
    mt = float(params.get("mask_threshold", 0.5))
    ma = float(params.get("min_area_fraction", 0.0))
    kf = float(params.get("keep_fraction", KEEP_FRACTION))
    return {
        "slice_threshold": SliceThreshold(legacy_mask_threshold),
        "whole_study, all components, no min area": WholeStudy(mt, 0.0, 0.0),
        "whole_study, all components": WholeStudy(mt, ma, 0.0),
        "whole_study, no min area": WholeStudy(mt, 0.0, kf),
        "whole_study, largest component only": WholeStudy(mt, ma, 1.0),
        "whole_study (tuned)": WholeStudy(mt, ma, kf),
    }


def ablation(val: SplitOutputs, threshold: float, params: dict[str, Any],
             test: SplitOutputs | None = None,
             rules: dict[str, ArrayRule] | None = None) -> list[dict[str, Any]]:
    """Each rule's figures on the validation patients (for the decision) and, when given, on the
    test patients beside them (reported, never used to choose)."""
    if val.split != "val":
        raise ValueError(f"the ablation decides on the validation split, received {val.split!r}")
    if test is not None and test.split != "test":
        raise ValueError(f"the reported split must be 'test', received {test.split!r}")
    rows = []
    for name, rule in (rules or ablation_rules(params)).items():
        rows.append({"rule": name, "params": rule.params(),
                     "validation": figures(rule, val, threshold),
                     "test": None if test is None else figures(rule, test, threshold)})
    return rows


def _peak(maps: np.ndarray) -> np.ndarray:
    return np.asarray(maps).reshape(len(maps), -1).max(axis=1).astype(np.float64)


#: the slice scores compared for ranking slices (ROC-AUC); ``tumor_score`` is what is used
SCORES = {
    "classifier probability": lambda out: out.prob,
    "segmenter peak": lambda out: _peak(out.maps),
    "mean of the two": lambda out: (out.prob + _peak(out.maps)) / 2.0,
    "larger of the two (tumor_score)": lambda out: tumor_score(out.prob, out.maps),
}


def score_ablation(val: SplitOutputs, test: SplitOutputs | None = None) -> list[dict[str, Any]]:
    """Slice ROC-AUC of each candidate slice score on the validation patients (the decision)
    and, when given, on the test patients beside them (reported, never used to choose)."""
    if val.split != "val":
        raise ValueError(f"the score is chosen on the validation split, received {val.split!r}")
    rows = []
    for name, fn in SCORES.items():
        row = {"score": name, "validation_roc_auc": m.classification_metrics(
            val.y_true, fn(val), 0.5)["roc_auc"], "test_roc_auc": None}
        if test is not None:
            row["test_roc_auc"] = m.classification_metrics(test.y_true, fn(test), 0.5)["roc_auc"]
        rows.append(row)
    return rows


ABLATION_COLUMNS = (("dice_per_patient_mean", "Dice mean"),
                    ("dice_per_patient_median", "Dice median"),
                    ("sensitivity", "sens."), ("specificity", "spec."),
                    ("false_positive_slices_per_patient", "FP/patient"),
                    ("components_dropped", "comp. dropped"))


def ablation_markdown(rows: list[dict[str, Any]]) -> str:
    """The ablation as a Markdown table: validation figures, test figures beside them."""
    head = ["rule"] + [f"val {s}" for _, s in ABLATION_COLUMNS]
    with_test = any(r["test"] is not None for r in rows)
    if with_test:
        head += [f"test {s}" for _, s in ABLATION_COLUMNS]

    def cell(v: Any) -> str:
        if v is None:
            return "n/a"
        return str(v) if isinstance(v, int) else f"{float(v):.3f}"

    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["rule"]] + [cell(r["validation"][k]) for k, _ in ABLATION_COLUMNS]
        if with_test:
            cells += [cell((r["test"] or {}).get(k)) for k, _ in ABLATION_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def score_markdown(rows: list[dict[str, Any]]) -> str:
    """The slice-score comparison as a Markdown table."""
    def cell(v: Any) -> str:
        return "n/a" if v is None else f"{float(v):.4f}"

    lines = ["| slice score | val ROC-AUC | test ROC-AUC |", "| --- | --- | --- |"]
    lines += [f"| {r['score']} | {cell(r['validation_roc_auc'])} | {cell(r['test_roc_auc'])} |"
              for r in rows]
    return "\n".join(lines) + "\n"
