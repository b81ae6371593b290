"""The post-processing ablation of a trained model version, and evaluation under its rule."""

from brain_tumor import steps
from brain_tumor.evaluation.run import postprocess_ablation


def test_ablation_on_the_tiny_model(trained):
    settings, record = trained
    result = postprocess_ablation(steps.open_store(settings), settings, record["model_version"],
                                  include_test=True, flip=True)
    rules = [r["rule"] for r in result["rows"]]
    assert rules[0] == "slice_threshold" and rules[-2] == "whole_study (tuned)"
    assert rules[-1] == "flip TTA, whole_study, re-tuned on validation"
    assert result["rows"][-1]["test"]["patients"] >= 1
    assert result["params"] == record["postprocess"]["params"]
    tuned = result["rows"][-2]
    assert tuned["validation"]["dice_per_patient_mean"] == (
        record["postprocess"]["objective"]["dice_per_patient_mean"])
    assert tuned["test"] is not None and tuned["test"]["patients"] >= 1
    assert result["markdown"].startswith("| rule |")
    scores = {r["score"]: r for r in result["scores"]}
    assert set(scores) == {"classifier probability", "segmenter peak", "mean of the two",
                           "larger of the two (tumor_score)"}
    assert all(0.0 <= r["validation_roc_auc"] <= 1.0 and r["test_roc_auc"] is not None
               for r in scores.values() if r["validation_roc_auc"] is not None)
    assert "| slice score | val ROC-AUC | test ROC-AUC |" in result["markdown"]


def test_evaluation_runs_the_versions_post_processing(evaluated):
    _, record, metrics = evaluated
    assert metrics["postprocess"] == {"rule": "whole_study",
                                      "params": record["postprocess"]["params"]}
    assert metrics["slice"]["ranked_by"] == "tumor_score"
    assert metrics["slice"]["roc_auc_classifier"] is not None
