"""Scoring and evaluation post-process a study the same way: one test patient both ways.

Evaluation's path: the dataset's model-size arrays, ``predict_batch``, ``postprocess_groups``
with the model version's rule at the native mask sizes. Scoring's path: the patient's slices
uploaded as an incoming study, read, predicted and post-processed by the scoring pipeline.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import cv2
import numpy as np

from brain_tumor import steps
from brain_tumor.ml.inputs import fetch_native_masks, load_arrays
from brain_tumor.ml.predict import predict_batch
from brain_tumor.scoring import study as score
from brain_tumor.scoring.postprocess import (
    WholeStudy,
    post_processor,
    postprocess_groups,
    tumor_score,
)
from brain_tumor.scoring.readers import upload_study
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore


def test_the_trained_version_carries_its_tuned_post_processing(trained, model) -> None:
    settings, record = trained
    pp = record["postprocess"]
    assert pp["rule"] == "whole_study" and pp["tuned_on"] == "validation"
    assert set(pp["params"]) == {"mask_threshold", "min_area_fraction", "keep_fraction"}
    assert post_processor(model.record, settings) == WholeStudy(**pp["params"])


def test_scoring_outputs_equal_evaluation_post_processing(trained, model, tmp_path: Path) -> None:
    settings, record = trained
    store = steps.open_store(settings)
    test = load_arrays(store, settings, record["dataset_version"], model.image_size).subset("test")
    tumor = {pid: int(test.labels[test.patient_ids == pid].sum())
             for pid in dict.fromkeys(test.patient_ids)}
    pid = max(tumor, key=tumor.get)
    rows = np.flatnonzero(test.patient_ids == pid)
    rows = rows[np.argsort(test.slice_index[rows])]
    sizes = [m.shape for m in fetch_native_masks(store, list(test.mask_keys[rows]))]

    # evaluation's way (brain_tumor.evaluation.run)
    prob, maps = predict_batch(model, test.images[rows].astype(np.float32), settings.batch_size)
    label, masks, summaries = postprocess_groups(
        post_processor(model.record, settings), prob, maps, sizes, test.patient_ids[rows],
        test.slice_index[rows], model.threshold)

    # scoring's way: the same slices as an incoming study
    folder = tmp_path / "study"
    folder.mkdir()
    for i in rows:
        (folder / f"{pid}_{int(test.slice_index[i])}.tif").write_bytes(
            store.get(str(test.image_keys[i])))
    own = settings.model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}"})
    out = ObjectStore.from_settings(own)  # the session model's bucket stays read-only
    out.ensure_bucket()
    sid, _ = upload_study(IncomingStore(out, own), folder, study_id="parity")
    result = score.score_study(out, own, model, sid)
    assert result["status"] == "scored"
    scores = ScoreStore(out, own)
    table = out.get_parquet(scores.output_key(model.version, sid, "slices.parquet"))
    assert list(table["slice_index"]) == [int(i) for i in test.slice_index[rows]]
    assert list(table["label"]) == [int(v) for v in label]
    assert list(table["tumor_pixels"]) == [int(m.sum()) for m in masks]
    # the slice score evaluation ranks by (ROC-AUC) is the one scoring stores
    assert np.allclose(table["tumor_score"], tumor_score(prob, maps), atol=1e-5)
    assert label.any(), "the tiny model found no tumor: the mask comparison needs one"
    for j, i in enumerate(rows):
        if label[j]:
            png = out.get(scores.output_key(model.version, sid,
                                              f"masks/{int(test.slice_index[i])}.png"))
            stored = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED) == 255
            assert np.array_equal(stored, masks[j])
    summary = scores.summary(model.version, sid)
    assert summary["postprocess_rule"] == "whole_study"
    for key in ("components_found", "components_dropped", "small_masks_dropped"):
        assert summary[key] == summaries[pid][key]
    assert summary["tumor_slices"] == int(label.sum())
