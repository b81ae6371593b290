"""The post-processing ablation of a trained model version, and evaluation under its rule."""

from brain_tumor import steps
from brain_tumor.evaluation.run import postprocess_ablation


def test_ablation_on_the_tiny_model(trained):
    settings, record = trained
    result = postprocess_ablation(steps.open_store(settings), settings, record["model_version"],
                                  include_test=True)
    rules = [r["rule"] for r in result["rows"]]
    assert rules[0] == "slice_threshold" and rules[-1] == "whole_study (tuned)"
    assert result["params"] == record["postprocess"]["params"]
    tuned = result["rows"][-1]
    assert tuned["validation"]["dice_per_patient_mean"] == (
        record["postprocess"]["objective"]["dice_per_patient_mean"])
    assert tuned["test"] is not None and tuned["test"]["patients"] >= 1
    assert result["markdown"].startswith("| rule |")


def test_evaluation_runs_the_versions_post_processing(evaluated):
    _, record, metrics = evaluated
    assert metrics["postprocess"] == {"rule": "whole_study",
                                      "params": record["postprocess"]["params"]}
