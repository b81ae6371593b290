"""brain_tumor.evaluation.tuning: post-processing tuned on validation patients only; ablation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from brain_tumor.evaluation import tuning
from brain_tumor.evaluation.evaluate import Predictions, evaluate
from brain_tumor.evaluation.report import model_card
from brain_tumor.evaluation.tuning import SplitOutputs, ablation, figures, split_outputs, tune
from brain_tumor.scoring.postprocess import WholeStudy, postprocess_groups

S = 16


def _outputs(split: str = "val", patients: int = 3, slices: int = 6) -> SplitOutputs:
    """Each patient: a tumor on slices 1-3 whose rim the segmenter sees at 0.55 and a 0.45 haze
    around it; false 2-pixel specks (0.9): on slice 4 touching the tumor's corner, on slice 5
    apart from it."""
    ids, idx, y, prob, maps, true = [], [], [], [], [], []
    for p in range(patients):
        for s in range(slices):
            t = np.zeros((S, S), bool)
            q = np.full((S, S), 0.05, np.float32)
            if 1 <= s <= 3:
                t[4:10, 4:10] = True
                q[3:11, 3:11] = 0.45  # haze: false pixels from mask_threshold 0.4 down
                q[4:10, 4:10] = 0.55  # rim: lost from mask_threshold 0.6 up
                q[5:9, 5:9] = 0.95
            if s == 4:
                q[10, 10:12] = 0.9
            if s == 5:
                q[14, 14:16] = 0.9
            ids.append(f"P{p}")
            idx.append(s)
            y.append(int(t.any()))
            prob.append(0.8 if t.any() else 0.3)
            maps.append(q)
            true.append(t)
    return SplitOutputs(split, np.array(ids), np.array(idx), np.array(y), np.array(prob),
                        np.stack(maps), np.stack(true))


def test_tune_picks_the_mask_threshold_and_min_area_on_validation() -> None:
    result = tune(_outputs(), 0.5, min_sensitivity=0.9, max_fp_per_patient=0.5,
                  mask_thresholds=(0.4, 0.5, 0.6), min_area_fractions=(0.0, 4 / (S * S)))
    assert result["params"] == {"mask_threshold": 0.5, "min_area_fraction": 4 / (S * S),
                                "keep_fraction": 0.1}
    assert result["rule"] == "whole_study" and result["tuned_on"] == "validation"
    assert result["constraints_met"] is True
    assert result["objective"]["dice_per_patient_mean"] == pytest.approx(1.0)
    assert result["objective"]["false_positive_slices_per_patient"] == 0.0
    assert result["tuned"] == ["mask_threshold", "min_area_fraction"]


def test_the_false_positive_ceiling_rules_out_keeping_specks() -> None:
    out = _outputs()
    kept_all = figures(WholeStudy(0.5, 0.0, 0.0), out, 0.5)
    assert kept_all["false_positive_slices_per_patient"] == 2.0
    components = figures(WholeStudy(0.5, 0.0, 0.1), out, 0.5)  # the apart speck goes
    assert components["false_positive_slices_per_patient"] == 1.0
    result = tune(out, 0.5, min_sensitivity=0.9, max_fp_per_patient=0.5,
                  mask_thresholds=(0.5,), min_area_fractions=(0.0,), keep_fraction=0.0)
    assert result["constraints_met"] is False  # the only candidate breaks the ceiling


def test_tuning_refuses_any_split_but_validation() -> None:
    with pytest.raises(ValueError, match="validation patients only, received the 'test' split"):
        tune(_outputs("test"), 0.5, min_sensitivity=0.9, max_fp_per_patient=0.5)
    mixed = SimpleNamespace(splits=np.array(["val", "test"]), patient_ids=np.array(["a", "b"]),
                            slice_index=np.array([0, 0]), labels=np.array([0, 0]),
                            masks=np.zeros((2, S, S)))
    with pytest.raises(ValueError, match=r"one split, received splits \['test', 'val'\]"):
        split_outputs(mixed, np.zeros(2), np.zeros((2, S, S)))


def test_tune_on_validation_reads_only_what_it_is_given() -> None:
    """Handed validation slices, the segmenter sees exactly those; test slices are refused."""
    val = _outputs()
    seen = []

    class Maps:  # the segmenter's output on the slices it is shown, by image content
        def predict(self, x: np.ndarray, batch_size: int, verbose: int) -> np.ndarray:
            seen.append(x.shape[0])
            return val.maps[x[:, 0, 0, 0].astype(int)][..., None]

    images = np.zeros((len(val.prob), S, S, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(len(val.prob))
    data = SimpleNamespace(splits=np.array(["val"] * len(val.prob)), images=images,
                           patient_ids=val.patient_ids, slice_index=val.slice_index,
                           labels=val.y_true, masks=val.true_masks,
                           segmenter_images=lambda: images)
    from brain_tumor.settings import load_settings

    settings = load_settings(env={}, postprocess_min_sensitivity=0.9,
                             postprocess_max_fp_per_patient=0.5)
    result = tuning.tune_on_validation(data, val.prob, Maps(), 0.5, settings)
    assert seen == [len(val.prob)] and result["validation_patients"] == 3
    assert result["min_sensitivity"] == 0.9 and result["max_fp_per_patient"] == 0.5
    data.splits = np.array(["test"] * len(val.prob))
    with pytest.raises(ValueError, match="'test' split"):
        tuning.tune_on_validation(data, val.prob, Maps(), 0.5, settings)


def test_ablation_reports_validation_and_test_figures_per_rule() -> None:
    val, test = _outputs("val"), _outputs("test", patients=2)
    params = {"mask_threshold": 0.5, "min_area_fraction": 0.0, "keep_fraction": 0.1}
    rows = ablation(val, 0.5, params, test=test)
    names = [r["rule"] for r in rows]
    assert names[0] == "slice_threshold" and names[-1] == "whole_study (tuned)"
    by = {r["rule"]: r for r in rows}
    assert by["whole_study (tuned)"]["validation"]["components_dropped"] == 3
    assert by["whole_study, all components, no min area"]["validation"][
        "false_positive_slices_per_patient"] == 2.0
    assert by["whole_study (tuned)"]["test"]["patients"] == 2
    table = tuning.ablation_markdown(rows)
    assert table.count("\n") == len(rows) + 2 and "test Dice mean" in table
    with pytest.raises(ValueError, match="validation split, received 'test'"):
        ablation(test, 0.5, params)


def test_evaluation_counts_the_final_labels() -> None:
    out = _outputs("test")
    rule = WholeStudy(0.5, 4 / (S * S), 0.1)
    prob = out.prob.copy()
    prob[out.slice_index == 5] = 0.9  # the classifier flags the apart speck's slices
    sizes = [(S, S)] * len(out.prob)
    label, masks, _ = postprocess_groups(rule, prob, out.maps, sizes, out.patient_ids,
                                         out.slice_index, 0.5)
    preds = Predictions(out.patient_ids, out.y_true, prob, list(out.true_masks), masks,
                        out.slice_index, label=label)
    metrics = evaluate(preds, 0.5, model_version="m-1", dataset_version="ds-1", n_boot=20,
                       postprocess={"rule": rule.name, "params": rule.params()})
    assert metrics["patient"]["false_positive_slices_per_patient"] == 0.0
    assert metrics["slice"]["specificity"] == 1.0 and metrics["slice"]["sensitivity"] == 1.0
    assert metrics["postprocess"]["rule"] == "whole_study"
    legacy = evaluate(Predictions(out.patient_ids, out.y_true, prob, list(out.true_masks), masks,
                                  out.slice_index), 0.5, model_version="m-1",
                      dataset_version="ds-1", n_boot=20)
    assert legacy["patient"]["false_positive_slices_per_patient"] == 1.0


def test_model_card_shows_the_tuned_post_processing() -> None:
    out = _outputs()
    tuned = tune(out, 0.5, min_sensitivity=0.9, max_fp_per_patient=0.5,
                 mask_thresholds=(0.5,), min_area_fractions=(0.0,))
    preds = Predictions(out.patient_ids, out.y_true, out.prob, list(out.true_masks),
                        list(out.true_masks), out.slice_index)
    metrics = evaluate(preds, 0.5, model_version="m-1", dataset_version="ds-1", n_boot=20)
    card = model_card(metrics, model_version="m-1", dataset_version="ds-1",
                      config={"postprocess": tuned})
    assert "## Post-processing" in card and "Rule: whole_study (mask_threshold 0.500" in card
    assert "Tuned on validation patients: mask_threshold, min_area_fraction" in card
    assert "tumor-free studies are not measured" in card
    legacy = model_card(metrics, model_version="m-1", dataset_version="ds-1", config={})
    assert "Rule: slice_threshold" in legacy


def test_slice_scores_are_compared_on_validation_and_reported_on_test() -> None:
    val, test = _outputs("val"), _outputs("test")
    val.maps[1] = np.minimum(val.maps[1], 0.3)  # the segmenter misses one tumor slice
    rows = {r["score"]: r for r in tuning.score_ablation(val, test)}
    assert rows["classifier probability"]["validation_roc_auc"] == 1.0  # 0.8 vs 0.3
    # 9 tumor and 9 tumor-free slices; that slice's peak (0.3) sits under the specks' (0.9) on
    # 6 tumor-free slices: 6 of the 81 pairs lost
    assert rows["segmenter peak"]["validation_roc_auc"] == pytest.approx(1 - 6 / 81)
    assert rows["larger of the two (tumor_score)"]["test_roc_auc"] is not None
    assert "| larger of the two (tumor_score) |" in tuning.score_markdown(list(rows.values()))
    with pytest.raises(ValueError, match="validation split"):
        tuning.score_ablation(test)
