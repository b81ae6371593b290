"""The promotion gate on fixed headline metrics: floors, ceiling, no-regression, explanations."""

import pytest

from brain_tumor.evaluation.gate import GateConfig, explain, run_gate
from brain_tumor.settings import load_settings
from brain_tumor.store.schemas import validate_record

CONFIG = GateConfig(min_sensitivity=0.80, min_roc_auc=0.85, min_dice=0.50,
                    max_fp_per_patient=None, tolerance=0.02)
GOOD = {"roc_auc": 0.93, "sensitivity": 0.88, "specificity": 0.90,
        "dice_per_patient_mean": 0.70, "dice_per_patient_median": 0.72, "detection_rate": 1.0,
        "false_positive_slices_per_patient": 1.5, "ece": 0.04}


def _with(**changes: object) -> dict:
    return {**GOOD, **changes}


def _failed(result: dict) -> list[str]:
    return [c["name"] for c in result["checks"] if not c["passed"]]


def test_from_settings_reads_gate_fields():
    settings = load_settings(env={}, gate_min_sensitivity=0.7, gate_max_fp_per_patient=3.0,
                             gate_tolerance=0.05)
    assert GateConfig.from_settings(settings) == GateConfig(0.7, 0.85, 0.50, 3.0, 0.05)


def test_passes_floors_and_validates():
    result = run_gate(GOOD, None, CONFIG, model_version="m-new")
    assert result["passed"] and _failed(result) == []
    assert validate_record("gate_result", result) is result
    assert result["champion_version"] is None
    assert {c["name"] for c in result["checks"]} == {"floor_sensitivity", "floor_roc_auc",
                                                     "floor_dice"}
    for check in result["checks"]:
        assert set(check) >= {"name", "kind", "metric", "value", "bound", "op", "passed"}
        assert check["kind"] == "floor" and check["op"] == ">="
    assert explain(result) == "passed: all 3 checks"


@pytest.mark.parametrize(("metric", "value", "check"), [
    ("sensitivity", 0.42, "floor_sensitivity"),
    ("roc_auc", 0.80, "floor_roc_auc"),
    ("dice_per_patient_mean", 0.30, "floor_dice"),
])
def test_each_floor_fails_alone(metric, value, check):
    result = run_gate(_with(**{metric: value}), None, CONFIG, model_version="m-new")
    assert not result["passed"]
    assert _failed(result) == [check]


def test_floor_boundary_passes():
    assert run_gate(_with(sensitivity=0.80), None, CONFIG, model_version="m")["passed"]


def test_fp_ceiling_only_when_configured():
    config = GateConfig(0.80, 0.85, 0.50, max_fp_per_patient=1.0, tolerance=0.02)
    result = run_gate(GOOD, None, config, model_version="m-new")
    ceiling = [c for c in result["checks"] if c["kind"] == "ceiling"]
    assert [(c["op"], c["bound"], c["passed"]) for c in ceiling] == [("<=", 1.0, False)]
    assert explain(result) == "false_positive_slices_per_patient 1.50 > ceiling 1.00"
    assert run_gate(_with(false_positive_slices_per_patient=0.5), None, config,
                    model_version="m")["passed"]


def test_first_model_faces_floors_only():
    result = run_gate(GOOD, None, CONFIG, model_version="m-first")
    assert not [c for c in result["checks"] if c["kind"] == "no_regression"]


def test_no_regression_against_champion():
    champion = _with(roc_auc=0.95, sensitivity=0.90, dice_per_patient_mean=0.72)
    within = run_gate(_with(roc_auc=0.93, sensitivity=0.88, dice_per_patient_mean=0.70),
                      champion, CONFIG, model_version="m-new", champion_version="m-old")
    assert within["passed"], explain(within)  # exactly at champion - tolerance: passes
    assert within["champion_version"] == "m-old"
    assert sorted(c["metric"] for c in within["checks"] if c["kind"] == "no_regression") == [
        "dice_per_patient_mean", "roc_auc", "sensitivity"]
    beyond = run_gate(_with(roc_auc=0.92), champion, CONFIG, model_version="m-new",
                      champion_version="m-old")
    assert not beyond["passed"]
    assert _failed(beyond) == ["no_regression_roc_auc"]
    assert explain(beyond) == "roc_auc 0.92 < champion 0.95 - tolerance 0.02 = 0.93"


def test_none_metric_fails_with_note():
    result = run_gate(_with(roc_auc=None), _with(sensitivity=None), CONFIG,
                      model_version="m-new", champion_version="m-old")
    assert not result["passed"]
    assert _failed(result) == ["floor_roc_auc", "no_regression_roc_auc",
                               "no_regression_sensitivity"]
    notes = {c["name"]: c["note"] for c in result["checks"] if not c["passed"]}
    assert "roc_auc is undefined" in notes["floor_roc_auc"]
    assert "champion's sensitivity is undefined" in notes["no_regression_sensitivity"]
    assert validate_record("gate_result", result)


def test_explain_lists_each_failure():
    result = run_gate(_with(sensitivity=0.42, dice_per_patient_mean=None), None, CONFIG,
                      model_version="m-new")
    lines = explain(result).splitlines()
    assert lines[0] == "sensitivity 0.42 < floor 0.80"
    assert lines[1].startswith("dice_per_patient_mean undefined")
    assert len(lines) == 2


def test_bad_inputs_say_what_was_received():
    with pytest.raises(ValueError, match="lack .*received keys"):
        run_gate({"roc_auc": 0.9}, None, CONFIG, model_version="m")
    with pytest.raises(ValueError, match="must be a number or None, received str"):
        run_gate(_with(sensitivity="high"), None, CONFIG, model_version="m")
    with pytest.raises(ValueError, match="without champion metrics"):
        run_gate(GOOD, None, CONFIG, model_version="m", champion_version="m-old")
