"""brain_tumor.scoring.postprocess: the whole-study rule on hand-made volumes; the slice rule."""

from __future__ import annotations

import numpy as np
import pytest

from brain_tumor.scoring.contracts import RawPrediction, Study
from brain_tumor.scoring.postprocess import (
    SliceThreshold,
    WholeStudy,
    keep_components,
    post_processor,
    postprocess_groups,
    tumor_score,
)
from brain_tumor.settings import load_settings

S = 16  # model size of the hand-made maps
HI, LO = 0.9, 0.1


def _maps(n: int) -> np.ndarray:
    return np.full((n, S, S), LO, dtype=np.float32)


def _blob(maps: np.ndarray, slices: range | list[int], y: int, x: int, h: int, w: int) -> None:
    for i in slices:
        maps[i, y:y + h, x:x + w] = HI


def _sizes(n: int, size: int = S) -> list[tuple[int, int]]:
    return [(size, size)] * n


def test_keeps_the_largest_component_and_those_of_a_tenth_of_it() -> None:
    vol = np.zeros((6, S, S), bool)
    vol[0:3, 0:4, 0:4] = True  # 48 voxels: the largest
    vol[5, 10:15, 10] = True  # 5 voxels: at least a tenth (4.8), kept
    vol[5, 0, 15] = True  # 1 voxel: dropped
    vol[5, 15, 0:4] = True  # 4 voxels: under 4.8, dropped
    kept, found, dropped = keep_components(vol, 0.1)
    assert (found, dropped) == (4, 2)
    assert kept[0:3, 0:4, 0:4].all() and kept[5, 10:15, 10].all()
    assert not kept[5, 0, 15] and not kept[5, 15, 0:4].any()
    assert kept.sum() == 48 + 5


def test_components_connect_across_slices_through_corners() -> None:
    vol = np.zeros((3, S, S), bool)
    vol[0, 4, 4] = vol[1, 5, 5] = vol[2, 6, 6] = True  # diagonal steps: one 26-component
    vol[2, 12, 12] = True  # apart
    _, found, _ = keep_components(vol, 0.0)
    assert found == 2


def test_whole_study_drops_small_components_and_records_them() -> None:
    maps = _maps(6)
    _blob(maps, range(1, 4), 2, 2, 6, 6)  # 108 voxels
    _blob(maps, [5], 12, 12, 2, 2)  # 4 voxels: under a tenth -> dropped
    prob = np.full(6, 0.9)
    pred = WholeStudy(0.5, 0.0, 0.1).apply(prob, maps, _sizes(6), threshold=0.5)
    assert pred.summary["components_found"] == 2 and pred.summary["components_dropped"] == 1
    assert list(pred.label) == [0, 1, 1, 1, 0, 0]
    assert not pred.masks[5].any() and pred.masks[2].sum() == 36
    # keep_fraction 0 keeps every component
    every = WholeStudy(0.5, 0.0, 0.0).apply(prob, maps, _sizes(6), threshold=0.5)
    assert every.summary["components_dropped"] == 0 and every.label[5] == 1


def test_specks_under_the_minimum_area_are_dropped_unless_the_classifier_says_tumor() -> None:
    maps = _maps(4)
    _blob(maps, range(0, 3), 4, 4, 6, 6)  # the tumor
    maps[3, 9, 9] = maps[3, 9, 8] = HI  # a 2-pixel speck touching the tumor's last slice
    rule = WholeStudy(0.5, min_area_fraction=4 / (S * S), keep_fraction=0.1)
    doubtful = rule.apply(np.array([0.9, 0.9, 0.9, 0.2]), maps, _sizes(4), threshold=0.5)
    assert doubtful.summary["components_dropped"] == 0  # the speck belongs to the tumor
    assert doubtful.summary["small_masks_dropped"] == 1
    assert list(doubtful.label) == [1, 1, 1, 0] and not doubtful.masks[3].any()
    confident = rule.apply(np.array([0.9, 0.9, 0.9, 0.8]), maps, _sizes(4), threshold=0.5)
    assert confident.label[3] == 1 and confident.masks[3].sum() == 2
    assert confident.summary["small_masks_dropped"] == 0


def test_final_label_follows_the_mask_not_the_classifier_alone() -> None:
    maps = _maps(3)
    _blob(maps, [0, 1], 3, 3, 5, 5)
    prob = np.array([0.05, 0.95, 0.99])  # slice 0: classifier miss; slice 2: no mask at all
    pred = WholeStudy(0.5, 0.0, 0.1).apply(prob, maps, _sizes(3), threshold=0.5)
    assert list(pred.label) == [1, 1, 0]  # the U-Net finds slice 0; slice 2 keeps no label
    assert pred.masks[0].sum() == 25 and not pred.masks[2].any()
    assert pred.geometry[2]["area"] == 0 and pred.geometry[0]["bbox"] == (3, 3, 7, 7)
    legacy = SliceThreshold(0.5).apply(prob, maps, _sizes(3), threshold=0.5)
    assert list(legacy.label) == [0, 1, 1] and not legacy.masks[0].any()


def test_masks_come_back_at_native_size_and_agree_with_labels() -> None:
    maps = _maps(3)
    _blob(maps, [0, 1], 4, 4, 6, 6)
    maps[2, 0, 0] = 0.55  # one weak pixel: gone once resized
    sizes = [(32, 32), (48, 40), (32, 32)]
    pred = WholeStudy(0.5, 0.0, 0.0).apply(np.full(3, 0.9), maps, sizes, threshold=0.5)
    assert [m.shape for m in pred.masks] == sizes
    assert list(pred.label) == [int(m.any()) for m in pred.masks]
    assert pred.masks[0][8:20, 8:20].all() and not pred.masks[0][:6].any()
    # at the model's own size the mask is exactly the kept voxels
    same = WholeStudy(0.5, 0.0, 0.1).apply(np.full(3, 0.9), maps, _sizes(3), threshold=0.5)
    assert np.array_equal(np.stack(same.masks)[:2], maps[:2] >= 0.5)


def test_study_slices_are_taken_in_slice_order() -> None:
    maps = _maps(4)
    _blob(maps, [0, 1], 4, 4, 4, 4)  # slices 10 and 11 in slice order
    _blob(maps, [2], 4, 4, 4, 4)  # slice 30: not next to them
    order = [10, 11, 30, 12]
    study = Study("s", [np.zeros((S, S, 3), np.uint8)] * 4, order, ["k"] * 4)
    pred = WholeStudy(0.5, 0.0, 0.1)(RawPrediction(np.full(4, 0.9), maps), study, 0.5)
    # ordered 10, 11, 12, 30: the blob of slice 30 is a second component of 16 >= 3.2
    assert pred.summary["components_found"] == 2
    assert list(pred.label) == [1, 1, 1, 0]


def test_groups_are_post_processed_one_patient_at_a_time() -> None:
    maps = _maps(6)
    _blob(maps, [0, 2], 0, 0, 10, 10)  # patient A: large tumor
    _blob(maps, [1], 12, 12, 2, 2)  # patient B: a small one, its only component
    _blob(maps, [3], 15, 15, 1, 1)  # patient A: a 1-voxel component, dropped
    ids = ["A", "B", "A", "A", "B", "B"]
    idx = [5, 1, 6, 9, 2, 3]
    rule = WholeStudy(0.5, 0.0, 0.1)
    label, masks, summaries = postprocess_groups(rule, np.full(6, 0.9), maps, _sizes(6), ids,
                                                 idx, 0.5)
    assert list(label) == [1, 1, 1, 0, 0, 0]
    assert summaries["A"]["components_dropped"] == 1 and summaries["B"]["components_dropped"] == 0
    one = rule.apply(np.full(3, 0.9), maps[[0, 2, 3]], _sizes(3), 0.5)
    assert all(np.array_equal(a, b) for a, b in zip([masks[0], masks[2], masks[3]], one.masks,
                                                    strict=True))


def test_post_processor_follows_model_json() -> None:
    settings = load_settings(env={}, mask_threshold=0.4)
    legacy = post_processor({"model_version": "m-1"}, settings)
    assert isinstance(legacy, SliceThreshold) and legacy.mask_threshold == 0.4
    tuned = post_processor({"postprocess": {"rule": "whole_study", "params": {
        "mask_threshold": 0.6, "min_area_fraction": 0.001, "keep_fraction": 0.1}}}, settings)
    assert tuned == WholeStudy(0.6, 0.001, 0.1)
    with pytest.raises(ValueError, match="unknown post-processing rule.*'magic'"):
        post_processor({"postprocess": {"rule": "magic"}}, settings)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="received 1.5"):
        WholeStudy(1.5)
    with pytest.raises(ValueError, match="one of each per slice"):
        WholeStudy().apply(np.full(2, 0.5), _maps(3), _sizes(3), 0.5)


def test_the_tumor_score_is_the_stronger_of_the_two_models() -> None:
    maps = _maps(3)
    maps[1, 2, 2] = 0.8  # a segmenter peak where the classifier doubts
    prob = np.array([0.6, 0.2, 0.05])
    assert np.allclose(tumor_score(prob, maps), [0.6, 0.8, LO])
    with pytest.raises(ValueError, match="one N x S x S map per probability"):
        tumor_score(prob[:2], maps)


def test_both_rules_carry_the_tumor_score_in_the_studys_order() -> None:
    maps = _maps(3)
    maps[2, 3:6, 3:6] = HI
    prob = np.array([0.7, 0.2, 0.3])
    order = [20, 10, 30]  # given out of slice order
    study = Study("s", [np.zeros((S, S, 3), np.uint8)] * 3, order, ["k"] * 3)
    raw = RawPrediction(prob, maps)
    for rule in (WholeStudy(0.5, 0.0, 0.1), SliceThreshold(0.5)):
        pred = rule(raw, study, 0.5)
        assert np.allclose(pred.score, [0.7, 0.2, HI]), rule.name
