"""Evaluating a stored model version on the test patients of a stored dataset version (I/O side).

Predictions are made at the model's input size and their masks resized back to each slice's
native size, where they meet the true masks. The decision threshold is the model's own, chosen
on its validation patients at training time — never on the test patients.

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

import numpy as np

from brain_tumor.evaluation.evaluate import Predictions, evaluate
from brain_tumor.evaluation.report import model_card, write_plots
from brain_tumor.ingest.split import split_counts
from brain_tumor.ml.inputs import fetch_native_masks, load_arrays
from brain_tumor.ml.predict import load_model_version, postprocess, predict_batch
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
    arrays = load_arrays(store, settings, dataset_version, model.image_size, progress=progress)
    test = arrays.subset("test")
    if len(test) == 0:
        raise ValueError(f"dataset {dataset_version} has no test slices")
    true_masks = fetch_native_masks(store, list(test.mask_keys), workers=settings.io_workers)
    prob, maps = predict_batch(model, test.images.astype(np.float32), settings.batch_size)
    _, pred_masks = postprocess(prob, maps, [m.shape for m in true_masks], model.threshold,
                                settings.mask_threshold)
    preds = Predictions(patient_ids=test.patient_ids, y_true=test.labels, prob=prob,
                        true_masks=true_masks, pred_masks=pred_masks,
                        slice_index=test.slice_index)
    metrics = evaluate(preds, model.threshold, model_version=model_version,
                       dataset_version=dataset_version, n_boot=settings.bootstrap_samples,
                       seed=settings.train_seed)
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
