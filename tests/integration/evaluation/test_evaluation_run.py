"""Evaluation of a stored model version: metrics, plots and model card land in S3, once."""

import json

from brain_tumor import steps
from brain_tumor.evaluation.run import evaluate_model_version
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.schemas import validate_record


def test_metrics_plots_and_card_are_stored(evaluated):
    settings, record, metrics = evaluated
    store = steps.open_store(settings)
    models = ModelStore(store, settings)
    version, dataset = record["model_version"], record["dataset_version"]
    stored = validate_record("metrics", json.loads(store.get(models.key(version, "metrics.json"))))
    assert stored == json.loads(json.dumps(metrics, default=str))
    assert stored["threshold"] == record["threshold"] and stored["threshold_source"] == "validation"
    assert stored["counts"]["patients"] >= 1 and stored["slice"]["confusion"]
    for name in ("roc", "pr", "confusion", "calibration", "slices"):
        assert store.get(models.key(version, "plots", f"{name}.png"))[:4] == b"\x89PNG"
        assert store.exists(models.evaluation_key(version, dataset, f"plots/{name}.png"))
    card = store.get(models.key(version, "model_card.md")).decode()
    assert version in card and "not for diagnosis" in card.lower()
    assert models.evaluation(version, dataset) == stored


def test_evaluating_again_reuses_the_stored_result(evaluated, monkeypatch):
    settings, record, metrics = evaluated
    import brain_tumor.evaluation.run as run

    monkeypatch.setattr(run, "load_model_version", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("evaluated twice")))
    again = evaluate_model_version(steps.open_store(settings), settings, record["model_version"])
    assert again["slice"] == json.loads(json.dumps(metrics["slice"]))


def test_step_returns_headline_numbers(evaluated):
    settings, record, _ = evaluated
    result = steps.evaluate(settings, record["model_version"])
    assert {"roc_auc", "sensitivity", "dice_per_patient_mean", "detection_rate",
            "false_positive_slices_per_patient"} <= set(result)
