"""Evaluating a stored model version on the test patients of a stored dataset version (I/O side).

Predictions are made at the model's input size and go through the model version's own
post-processing (``brain_tumor.scoring.postprocess.post_processor``, the rule scoring runs),
each test patient's slices in slice order as one study; its masks come back at each slice's
native size, where they meet the true masks, and its final labels are what sensitivity,
specificity and false positives count. The decision threshold and the post-processing
parameters are the model's own, chosen on its validation patients at training time — never on
the test patients.

Outputs, written once per (model, dataset) pair:
``models/<m>/evaluations/<dataset>/{metrics.json, model_card.md, plots/*.png}`` (``metrics.json``
last). The evaluation on the model's own dataset version is also copied to
``models/<m>/metrics.json``, ``model_card.md`` and ``plots/``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from brain_tumor.evaluation.evaluate import Predictions, evaluate
from brain_tumor.evaluation.report import model_card, write_plots
from brain_tumor.evaluation.tuning import (
    SplitOutputs,
    ablation,
    ablation_markdown,
    ablation_rules,
    score_ablation,
    score_markdown,
    split_outputs,
    tune,
)
from brain_tumor.ingest.split import split_counts
from brain_tumor.ml.inputs import fetch_native_masks, for_model, load_arrays
from brain_tumor.ml.predict import load_model_version, predict_dataset
from brain_tumor.scoring.postprocess import (
    WholeStudy,
    post_processor,
    postprocess_groups,
    tumor_score,
)
from brain_tumor.settings import Settings
from brain_tumor.store.datasets import DatasetStore
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.storage import ObjectStore

log = logging.getLogger(__name__)


def evaluate_model_version(store: ObjectStore, settings: Settings, model_version: str,
                           dataset_version: str | None = None, progress: bool = False) -> dict:
    """Evaluate (once) and store the metrics, plots and model card; returns metrics.json."""
    models = ModelStore(store, settings)
    record = models.record(model_version)
    datasets = DatasetStore(store, settings)
    dataset_version = datasets.resolve(dataset_version or record["dataset_version"])
    existing = models.evaluation(model_version, dataset_version)
    if existing is not None:
        log.info("%s was evaluated on %s already", model_version, dataset_version)
        return existing
    model = load_model_version(store, settings, model_version)
    arrays = for_model(load_arrays(store, settings, dataset_version, model.image_size,
                                   progress=progress), model.record)
    test = arrays.subset("test")
    if len(test) == 0:
        raise ValueError(f"dataset {dataset_version} has no test slices")
    true_masks = fetch_native_masks(store, list(test.mask_keys), workers=settings.io_workers)
    prob, maps = predict_dataset(model, test, settings.batch_size)
    rule = post_processor(record, settings)
    label, pred_masks, _ = postprocess_groups(rule, prob, maps, [m.shape[:2] for m in true_masks],
                                              test.patient_ids, test.slice_index, model.threshold)
    preds = Predictions(patient_ids=test.patient_ids, y_true=test.labels, prob=prob,
                        true_masks=true_masks, pred_masks=pred_masks,
                        slice_index=test.slice_index, label=label,
                        score=tumor_score(prob, maps))
    metrics = evaluate(preds, model.threshold, model_version=model_version,
                       dataset_version=dataset_version, n_boot=settings.bootstrap_samples,
                       seed=settings.train_seed,
                       postprocess={"rule": rule.name, "params": rule.params()})
    counts = split_counts(datasets.split(dataset_version))
    card = model_card(metrics, model_version=model_version, dataset_version=dataset_version,
                      config=record, split_counts=counts.to_dict(orient="index"))
    own = dataset_version == record["dataset_version"]
    with tempfile.TemporaryDirectory(prefix="brain-tumor-eval-") as tmp:
        out = Path(tmp)
        plots = write_plots(metrics, preds, out / "plots", images=test.images)
        uploads = [(p, f"plots/{p.name}") for p in plots]
        (out / "model_card.md").write_text(card)
        uploads.append((out / "model_card.md", "model_card.md"))
        for path, name in uploads:
            store.upload_file(path, models.evaluation_key(model_version, dataset_version, name))
            if own:
                store.upload_file(path, models.key(model_version, name))
    body = json.dumps(metrics, indent=2, sort_keys=True, default=str).encode()
    if own:
        store.put_new(models.key(model_version, "metrics.json"), body)
    store.put_new(models.evaluation_key(model_version, dataset_version, "metrics.json"), body)
    log.info("evaluated %s on the %d test slices of %s", model_version, len(test), dataset_version)
    return metrics


def postprocess_ablation(store: ObjectStore, settings: Settings, model_version: str,
                         include_test: bool = False, flip: bool = False) -> dict:
    """Each post-processing rule's figures for one trained model version, and each candidate
    slice score's ROC-AUC: on its validation patients (for the decision) and, with
    ``include_test``, its test patients beside them. ``flip`` adds the rule re-tuned on
    validation outputs averaged with their left-right mirror images (test-time augmentation)."""
    record = ModelStore(store, settings).record(model_version)
    model = load_model_version(store, settings, model_version)
    arrays = for_model(load_arrays(store, settings, record["dataset_version"], model.image_size),
                       model.record)

    def outputs(split: str, mirror: bool = False) -> SplitOutputs:
        data = arrays.subset(split)
        if len(data) == 0:
            raise ValueError(f"dataset {record['dataset_version']} has no {split} slices")
        prob, maps = predict_dataset(model, data, settings.batch_size, flip=mirror)
        return split_outputs(data, prob, maps)

    params = (record.get("postprocess") or {}).get("params") or {
        "mask_threshold": settings.mask_threshold}
    val = outputs("val")
    test = outputs("test") if include_test else None
    rows = ablation(val, model.threshold, params, test=test,
                    rules=ablation_rules(params, settings.mask_threshold))
    if flip:
        val_flip = outputs("val", mirror=True)
        tuned = tune(val_flip, model.threshold,
                     min_sensitivity=settings.postprocess_min_sensitivity,
                     max_fp_per_patient=settings.postprocess_max_fp_per_patient)
        rows += [{**row, "rule": f"flip TTA, {row['rule']}, re-tuned on validation"}
                 for row in ablation(val_flip, model.threshold, tuned["params"],
                                     test=outputs("test", mirror=True) if include_test else None,
                                     rules={"whole_study": WholeStudy(**tuned["params"])})]
    scores = score_ablation(val, test)
    log.info("post-processing ablation of %s: %d rules, %d slice scores", model_version,
             len(rows), len(scores))
    return {"model_version": model_version, "dataset_version": record["dataset_version"],
            "threshold": model.threshold, "params": params, "rows": rows, "scores": scores,
            "markdown": ablation_markdown(rows) + "\n" + score_markdown(scores)}
