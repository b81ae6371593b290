"""The metric catalog against what evaluate() writes, and its readers (headline, gate, pages)."""

from __future__ import annotations

import numpy as np
import pytest

from brain_tumor import steps
from brain_tumor.evaluation import catalog
from brain_tumor.evaluation.evaluate import Predictions, evaluate
from brain_tumor.evaluation.gate import GateConfig, run_gate

#: scalars of the metric sections that are settings or counts, not metrics
NOT_METRICS = {("slice", "threshold")}


def _box(y0: int, x0: int, size: int = 12) -> np.ndarray:
    out = np.zeros((size, size), dtype=bool)
    out[y0:y0 + 3, x0:x0 + 3] = True
    return out


def _metrics() -> dict:
    """A metrics record where every metric is defined: tumor and tumor-free patients, misses."""
    rng = np.random.default_rng(4)
    ids, y, prob, true, pred = [], [], [], [], []
    for p in range(6):
        for s in range(4):
            tumor = p % 3 != 2 and s in (1, 2)
            ids.append(f"P{p}")
            y.append(int(tumor))
            prob.append(float(np.clip((0.7 if tumor else 0.3) + rng.normal(0, 0.2), 0, 1)))
            true.append(_box(2, 2) if tumor else np.zeros((12, 12), bool))
            pred.append(_box(2 + int(rng.integers(0, 3)), 2) if tumor or s == 3
                        else np.zeros((12, 12), bool))
    test = Predictions(np.array(ids), np.array(y), np.array(prob), true, pred)
    return evaluate(test, 0.5, model_version="m-1", dataset_version="ds-1", n_boot=50)


@pytest.fixture(scope="module")
def metrics() -> dict:
    return _metrics()


def test_every_metric_evaluate_writes_has_a_catalog_entry(metrics) -> None:
    written = {(section, key) for section in catalog.SECTIONS
               for key, value in metrics[section].items()
               if (isinstance(value, float) or value is None)
               and (section, key) not in NOT_METRICS}
    listed = {(m.section, m.key) for m in catalog.METRICS}
    assert written - listed == set(), "metrics evaluate() writes without a catalog entry"
    assert listed - written == set(), "catalog entries evaluate() does not write"
    assert all(m.value(metrics) is not None for m in catalog.METRICS)


def test_intervals_are_the_catalog_ones(metrics) -> None:
    assert list(metrics["intervals"]) == list(catalog.INTERVAL_METRICS)
    for name in catalog.INTERVAL_METRICS:
        low, high = metrics["intervals"][name]
        assert low <= catalog.metric(name).value(metrics) <= high


def test_catalog_is_consistent() -> None:
    names = [m.name for m in catalog.METRICS]
    assert len(names) == len(set(names))
    assert {m.section for m in catalog.METRICS} <= set(catalog.SECTIONS)
    headline = set(catalog.HEADLINE_KEYS)
    assert {m.name for m in catalog.ON_PAGE} <= headline
    assert set(catalog.NO_REGRESSION) <= headline
    assert catalog.metric("false_positive_slices_per_patient").direction == "lower"
    assert catalog.metric("roc_auc").direction == "higher"
    with pytest.raises(KeyError, match="no metric 'nope'"):
        catalog.metric("nope")


def test_text_rounds_as_the_catalog_says() -> None:
    dice = catalog.metric("dice_per_patient_mean")
    assert dice.text(0.12345) == "0.123" and dice.text(None) == "n/a"
    assert dice.text(None, missing="—") == "—" and dice.text(3) == "3"


def test_headline_step_feeds_the_gate(metrics) -> None:
    head = steps.headline(metrics)
    assert list(head) == list(catalog.HEADLINE_KEYS)
    assert head["ece"] == metrics["calibration"]["ece"]
    assert head["detection_rate"] == metrics["patient"]["detection_rate"]
    config = GateConfig(min_sensitivity=0.0, min_roc_auc=0.0, min_dice=0.0,
                        max_fp_per_patient=0.0, tolerance=0.0)
    result = run_gate(head, head, config, model_version="m-1", champion_version="m-0")
    ops = {c["metric"]: c["op"] for c in result["checks"] if c["kind"] != "no_regression"}
    assert ops["false_positive_slices_per_patient"] == "<="  # lower is better: a ceiling
    assert ops["sensitivity"] == ">="
    guarded = [c["metric"] for c in result["checks"] if c["kind"] == "no_regression"]
    assert guarded == list(catalog.NO_REGRESSION)
