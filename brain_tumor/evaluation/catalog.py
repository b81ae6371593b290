"""The metric catalog: each scalar metric of a ``metrics`` record, where it lives, how to show it.

One entry per metric, in the order reports list them. ``HEADLINE`` are the few numbers people
and the promotion gate look at first (``steps.headline``, registry events, the ops pages);
``INTERVAL_METRICS`` get a bootstrap interval over patients in ``metrics.json["intervals"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: sections of metrics.json that hold scalar metrics
SECTIONS = ("slice", "localization", "patient", "calibration")


@dataclass(frozen=True)
class Metric:
    """One metric: its place in metrics.json, its direction and how it is shown."""

    name: str
    section: str  # one of SECTIONS
    key: str  # key inside the section
    higher_is_better: bool
    label: str  # long label (model card)
    short: str  # short label (table columns, chart legends)
    interval: bool = False  # has a bootstrap interval under metrics["intervals"][name]
    headline: bool = False  # one of the numbers people and the gate look at first
    on_page: bool = False  # a column of the ops pages' model versions table
    no_regression: bool = False  # must not drop against the champion (promotion gate)
    digits: int = 3

    @property
    def direction(self) -> str:
        """'higher' or 'lower': which way is better."""
        return "higher" if self.higher_is_better else "lower"

    def value(self, metrics: dict[str, Any]) -> Any:
        """The metric's value in a metrics.json record (None when absent)."""
        return (metrics.get(self.section) or {}).get(self.key)

    def text(self, value: Any, missing: str = "n/a") -> str:
        """The value rounded for reading: ints as they are, floats to ``digits`` decimals."""
        if value is None:
            return missing
        if isinstance(value, int):  # bool too
            return str(value)
        try:
            return f"{float(value):.{self.digits}f}"
        except (TypeError, ValueError):
            return str(value)


METRICS: tuple[Metric, ...] = (
    Metric("roc_auc", "slice", "roc_auc", True, "ROC-AUC (slice)", "ROC-AUC",
           interval=True, headline=True, on_page=True, no_regression=True),
    Metric("roc_auc_classifier", "slice", "roc_auc_classifier", True,
           "ROC-AUC (slice, classifier alone)", "classifier ROC-AUC"),
    Metric("pr_auc", "slice", "pr_auc", True, "PR-AUC (slice)", "PR-AUC"),
    Metric("sensitivity", "slice", "sensitivity", True, "Sensitivity (slice)", "sensitivity",
           interval=True, headline=True, on_page=True, no_regression=True),
    Metric("specificity", "slice", "specificity", True, "Specificity (slice)", "specificity",
           interval=True, headline=True, on_page=True),
    Metric("precision", "slice", "precision", True, "Precision (slice)", "precision"),
    Metric("f1", "slice", "f1", True, "F1 (slice)", "F1"),
    Metric("accuracy", "slice", "accuracy", True, "Accuracy (slice)", "accuracy"),
    Metric("dice_per_patient_mean", "localization", "dice_per_patient_mean", True,
           "Dice per patient, mean", "Dice / patient",
           interval=True, headline=True, on_page=True, no_regression=True),
    Metric("dice_per_patient_median", "localization", "dice_per_patient_median", True,
           "Dice per patient, median", "Dice / patient (median)", headline=True),
    Metric("tumor_slice_dice", "localization", "tumor_slice_dice", True, "Dice, tumor slices",
           "Dice / tumor slice"),
    Metric("tumor_slice_iou", "localization", "tumor_slice_iou", True, "IoU, tumor slices",
           "IoU / tumor slice"),
    Metric("detection_rate", "patient", "detection_rate", True, "Patient detection rate",
           "detection rate", interval=True, headline=True, on_page=True),
    Metric("false_positive_slices_per_patient", "patient", "false_positive_slices_per_patient",
           False, "False-positive slices per patient", "FP slices / patient",
           interval=True, headline=True, on_page=True),
    Metric("brier", "calibration", "brier", False, "Brier score", "Brier"),
    Metric("ece", "calibration", "ece", False, "ECE (10 bins)", "ECE", headline=True,
           on_page=True),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
HEADLINE: tuple[Metric, ...] = tuple(m for m in METRICS if m.headline)
HEADLINE_KEYS: tuple[str, ...] = tuple(m.name for m in HEADLINE)
INTERVAL_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.interval)
NO_REGRESSION: tuple[str, ...] = tuple(m.name for m in METRICS if m.no_regression)
ON_PAGE: tuple[Metric, ...] = tuple(m for m in METRICS if m.on_page)


def metric(name: str) -> Metric:
    """The catalog entry of a metric name."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no metric {name!r} in the catalog; known: {sorted(BY_NAME)}") from None


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """name -> value of the headline metrics of a metrics.json record."""
    return {m.name: m.value(metrics) for m in HEADLINE}
