"""Training: a dataset version and the settings in, a published model version out.

The classifier (ResNet50 + head) and then the segmenter (a U-Net, or with ``seg_encoder``
'backbone' a U-Net decoder on the trained classifier's backbone) train on the train patients and are
checked on the validation patients every epoch (ReduceLROnPlateau, EarlyStopping with the best
weights restored, ModelCheckpoint, a warm-up LearningRateScheduler, CSV history). With pretrained
weights the classifier trains in two phases: frozen backbone, then its top stage fine-tuned at a
lower learning rate. The segmenter's batches hold ``seg_tumor_fraction`` tumor slices, its loss
is ``seg_loss``, and its epochs are judged by the per-patient Dice of the validation patients
(``brain_tumor.ml.callbacks.PatientDice``), which picks the checkpoint and stops training; with
``seg_context`` k it also reads the FLAIR of k neighbouring slices on each side
(``brain_tumor.ml.context``). Inputs
are normalized per study as ``intensity_norm`` says (``brain_tumor.ml.normalize``; model.json
records it for scoring). The decision threshold is then chosen on the validation patients.

The model version id is derived from the dataset version, the training settings and the code
version (package version and a hash of the training sources), so a crashed run started again
trains the same version, a finished one is not trained twice, and an upgrade of the training code
trains anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from brain_tumor.settings import Settings
from brain_tumor.store.datasets import DatasetStore, code_version, utc_now
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.storage import ObjectStore
from brain_tumor.tracking import log_training

log = logging.getLogger(__name__)

#: the settings that change what training produces (and so the model version id)
TRAINING_FIELDS = (
    "image_size", "keras_backend", "backbone", "weights", "batch_size", "epochs",
    "fine_tune_epochs", "learning_rate", "fine_tune_learning_rate", "warmup_epochs",
    "early_stopping_patience", "reduce_lr_patience", "dense_units", "dropout",
    "seg_base_filters", "seg_depth", "seg_epochs", "seg_learning_rate", "train_seed", "augment",
    "max_train_slices", "threshold_rule", "seg_tumor_fraction", "seg_loss", "intensity_norm",
    "seg_encoder", "seg_context",
    "postprocess_min_sensitivity", "postprocess_max_fp_per_patient",
    "ood_max_train_slices", "ood_slice_rate", "ood_study_share", "ood_study_rate",
)


#: the classifier keeps the epoch with the best validation ROC-AUC (ranking is what the threshold
#: and the gate use; its validation loss is noisy while BatchNorm statistics settle)
CLASSIFIER_MONITOR = ("val_auc", "max")
#: the segmenter keeps the epoch with the best mean per-patient Dice of the validation patients
SEGMENTER_MONITOR = ("val_patient_dice", "max")


def training_config(settings: Settings) -> dict[str, Any]:
    """The training settings as a plain dict."""
    return {name: getattr(settings, name) for name in TRAINING_FIELDS}


def weights_provenance(weights: str | None) -> str:
    """The backbone weights as model.json states them: 'none', 'imagenet' or '<file> sha256:<hex>'.
    """
    if weights is None:
        return "none"
    if weights == "imagenet":
        return weights
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"weights file does not exist: {weights!r}")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"{path.name} sha256:{digest.hexdigest()}"


def model_version_id(dataset_version: str, settings: Settings) -> str:
    """m-<hash of the dataset version, the training settings and the code version>.

    The code version (``brain_tumor.store.datasets.code_version``, also in model.json) is the
    package version plus a hash of the sources that decide what a trained model is: every file
    under ``brain_tumor/ml/``, ``brain_tumor/ingest/imaging.py`` and
    ``brain_tumor/evaluation/metrics.py``.
    """
    blob = json.dumps({"dataset": dataset_version, "code": code_version(),
                       **training_config(settings)}, sort_keys=True)
    return "m-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def warmup_schedule(base_lr: float, warmup_epochs: int):  # noqa: ANN201 - keras callback fn
    """Linear warm-up to base_lr, then leave the rate alone (ReduceLROnPlateau may lower it)."""

    def schedule(epoch: int, lr: float) -> float:
        if epoch < warmup_epochs:
            return float(base_lr) * (epoch + 1) / (warmup_epochs + 1)
        if epoch == warmup_epochs:
            return float(base_lr)
        return float(lr)

    return schedule


#: the metrics each epoch's log line shows, when the phase reports them
EPOCH_METRICS = ("loss", "val_loss", "val_auc", "val_dice_coefficient", "val_patient_dice")


def epoch_message(phase: str, epoch: int, epochs: int | None, logs: dict[str, Any]) -> str:
    """One finished epoch as a log line: '<phase> epoch <n>/<total>: loss 0.4123, ...'."""
    shown = ", ".join(f"{k} {float(logs[k]):.4f}" for k in EPOCH_METRICS if k in logs)
    return f"{phase} epoch {epoch}/{epochs if epochs is not None else '?'}: {shown}".rstrip(": ")


def _epoch_logger(phase: str) -> Any:
    """A callback that logs every finished epoch (INFO; the train task's log shows progress)."""
    import keras

    def on_epoch_end(epoch: int, logs: dict | None = None) -> None:
        log.info("%s", epoch_message(phase, epoch + 1, callback.params.get("epochs"), logs or {}))

    callback = keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)
    return callback


def make_callbacks(workdir: Path, name: str, settings: Settings, base_lr: float,
                   monitor: str = "val_loss", mode: str = "min") -> list:
    """The callbacks of one training phase."""
    import keras

    return [
        _epoch_logger(name),
        keras.callbacks.LearningRateScheduler(warmup_schedule(base_lr, settings.warmup_epochs)),
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=0.5,
                                          patience=settings.reduce_lr_patience, min_lr=1e-7),
        keras.callbacks.EarlyStopping(monitor=monitor, mode=mode,
                                      patience=settings.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(str(workdir / f"{name}.best.weights.h5"), monitor=monitor,
                                        mode=mode, save_best_only=True, save_weights_only=True),
        keras.callbacks.CSVLogger(str(workdir / f"{name}_history.csv")),
    ]


def _best_epoch(history: dict[str, list[float]], monitor: str = "val_loss",
                mode: str = "min") -> int:
    values = history.get(monitor) or history.get("loss") or [0.0]
    sign = 1.0 if mode == "min" else -1.0
    finite = [sign * v if np.isfinite(v) else np.inf for v in values]
    return int(np.argmin(finite)) + 1


def _fit(model, train_seq, val_seq, epochs: int, callbacks: list, verbose: int) -> dict:  # noqa: ANN001
    hist = model.fit(train_seq, validation_data=val_seq, epochs=epochs, callbacks=callbacks,
                     verbose=verbose)
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def train_classifier(data, settings: Settings, workdir: Path, verbose: int) -> tuple[Any, dict]:  # noqa: ANN001
    """Train the classifier; returns the model and its history (phases concatenated)."""
    import keras

    from brain_tumor.ml.inputs import SliceSequence, class_weights
    from brain_tumor.ml.models import build_classifier, set_backbone_trainable

    train, val = data
    weights = class_weights(train.labels)
    log.info("classifier: %d train / %d val slices, class weights %s", len(train), len(val),
             weights)
    seq = SliceSequence(train.images, train.labels, settings.batch_size, augment=settings.augment,
                        sample_weights=weights, labels=train.labels, shuffle=True,
                        seed=settings.train_seed)
    val_seq = SliceSequence(val.images, val.labels, settings.batch_size)
    model = build_classifier(settings.image_size, settings.weights, settings.backbone,
                             settings.dense_units, settings.dropout)
    metrics = [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")]
    pretrained = settings.weights is not None
    set_backbone_trainable(model, "frozen" if pretrained else "all")
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                  loss="binary_crossentropy", metrics=metrics)
    history = _fit(model, seq, val_seq, settings.epochs,
                   make_callbacks(workdir, "classifier", settings, settings.learning_rate,
                                  *CLASSIFIER_MONITOR), verbose)
    if pretrained and settings.fine_tune_epochs:
        log.info("classifier: fine-tuning the backbone's top stage at lr %s",
                 settings.fine_tune_learning_rate)
        set_backbone_trainable(model, "top")
        model.compile(optimizer=keras.optimizers.Adam(settings.fine_tune_learning_rate),
                      loss="binary_crossentropy", metrics=metrics)
        tuned = _fit(model, seq, val_seq, settings.fine_tune_epochs,
                     make_callbacks(workdir, "classifier_finetune", settings,
                                    settings.fine_tune_learning_rate, *CLASSIFIER_MONITOR),
                     verbose)
        history = {k: history.get(k, []) + tuned.get(k, []) for k in set(history) | set(tuned)}
    return model, history


def build_segmenter_for(settings: Settings, classifier: Any = None) -> Any:
    """The segmenter ``settings.seg_encoder`` asks for, untrained: the U-Net, or the U-Net on the
    classifier's backbone with the trained ``classifier``'s encoder weights."""
    from brain_tumor.ml.context import segmenter_channels
    from brain_tumor.ml.models import (
        build_backbone_segmenter,
        build_segmenter,
        copy_encoder_weights,
    )

    if settings.seg_encoder == "unet":
        return build_segmenter(settings.image_size, settings.seg_base_filters, settings.seg_depth,
                               segmenter_channels(settings.seg_context))
    if classifier is None:
        raise ValueError("seg_encoder 'backbone' starts from the trained classifier's backbone; "
                         "no classifier was given")
    model = build_backbone_segmenter(settings.image_size, settings.backbone,
                                     pretrained=settings.weights is not None,
                                     base_filters=settings.seg_base_filters)
    copy_encoder_weights(model, classifier)
    return model


def train_segmenter(data, settings: Settings, workdir: Path, verbose: int,  # noqa: ANN001
                    classifier: Any = None) -> tuple[Any, dict]:
    """Train the segmenter on the masks; returns the model (its best per-patient Dice epoch) and
    its history. ``classifier``: the trained classifier (needed by ``seg_encoder`` 'backbone')."""
    import keras

    from brain_tumor.ml.callbacks import PatientDice
    from brain_tumor.ml.inputs import SliceSequence
    from brain_tumor.ml.models import dice_coefficient, segmenter_loss

    train, val = data
    seq = SliceSequence(train.segmenter_images(), train.masks, settings.batch_size,
                        augment=settings.augment,
                        masks_are_targets=True, labels=train.labels, shuffle=True,
                        seed=settings.train_seed, tumor_fraction=settings.seg_tumor_fraction)
    val_seq = SliceSequence(val.segmenter_images(), val.masks, settings.batch_size,
                            masks_are_targets=True)
    log.info("segmenter (%s encoder): %d train slices (%d with tumor, %.0f%% of each batch), "
             "%d val slices of %d patients, loss %s", settings.seg_encoder, len(train),
             int(np.sum(train.labels)), 100 * seq.tumor_fraction, len(val),
             len(set(val.patient_ids.tolist())), settings.seg_loss)
    model = build_segmenter_for(settings, classifier)
    model.compile(optimizer=keras.optimizers.Adam(settings.seg_learning_rate),
                  loss=segmenter_loss(settings.seg_loss), metrics=[dice_coefficient])
    patient_dice = PatientDice(val.segmenter_images(), val.masks, val.patient_ids,
                               batch_size=settings.batch_size,
                               mask_threshold=settings.mask_threshold)
    callbacks = make_callbacks(workdir, "segmenter", settings, settings.seg_learning_rate,
                               *SEGMENTER_MONITOR)
    history = _fit(model, seq, val_seq, settings.seg_epochs, [patient_dice, *callbacks], verbose)
    log.info("segmenter: best per-patient validation Dice %.4f at epoch %d", patient_dice.best,
             patient_dice.best_epoch)
    return model, history


def _cap(train, limit: int | None, seed: int):  # noqa: ANN001, ANN202
    if limit is None or len(train) <= limit:
        return train
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(train), size=limit, replace=False))
    return train.take(keep)


def train_model(store: ObjectStore, settings: Settings, dataset_version: str | None = None,
                verbose: int = 2) -> dict:
    """Train both models on a dataset version and publish a model version; returns model.json."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") != settings.keras_backend:
        raise RuntimeError(f"KERAS_BACKEND is {os.environ.get('KERAS_BACKEND', 'tensorflow')!r} "
                           f"but settings ask for {settings.keras_backend!r}; set it before "
                           "Python starts (the CLI does)")
    import keras

    from brain_tumor.evaluation.metrics import choose_threshold
    from brain_tumor.ml.export import export_for_cpu
    from brain_tumor.ml.inputs import add_context, load_arrays, normalize_dataset

    datasets = DatasetStore(store, settings)
    dataset_version = datasets.resolve(dataset_version)
    datasets.split(dataset_version)  # fail early and clearly when the version is not split yet
    models = ModelStore(store, settings)
    version = model_version_id(dataset_version, settings)
    if models.exists(version):
        log.info("model version %s exists already: not training again", version)
        return models.record(version)
    weights = weights_provenance(settings.weights)
    keras.utils.set_random_seed(settings.train_seed)
    arrays = normalize_dataset(load_arrays(store, settings, dataset_version, settings.image_size,
                                           progress=verbose > 0), settings.intensity_norm)
    arrays = add_context(arrays, settings.seg_context)  # on whole studies, before the cap
    train = _cap(arrays.subset("train"), settings.max_train_slices, settings.train_seed)
    val = arrays.subset("val")
    with tempfile.TemporaryDirectory(prefix=f"brain-tumor-{version}-") as tmp:
        work = Path(tmp)
        out = work / "out"
        out.mkdir()
        classifier, c_hist = train_classifier((train, val), settings, work, verbose)
        segmenter, s_hist = train_segmenter((train, val), settings, work, verbose, classifier)
        val_prob = np.asarray(classifier.predict(val.images.astype(np.float32),
                                                 batch_size=settings.batch_size, verbose=0))
        threshold = choose_threshold(val.labels, val_prob.reshape(-1), settings.threshold_rule)
        # --- post-processing parameters, tuned on the validation patients (model.json) ---
        from brain_tumor.evaluation.tuning import tune_on_validation

        postprocess = tune_on_validation(val, val_prob, segmenter, threshold, settings)
        # --- end post-processing tuning ---
        # --- out-of-distribution reference: train slices fit it, validation slices bound it ---
        from brain_tumor.ml.ood_reference import fit_training_reference, write_reference

        ood_entry = write_reference(fit_training_reference(arrays, classifier, val_prob,
                                                           settings), out)
        # --- end out-of-distribution reference ---
        classifier.save(out / "classifier.keras")
        segmenter.save(out / "segmenter.keras")
        export_for_cpu(classifier, segmenter, out)  # classifier.onnx, segmenter.onnx
        for name in ("classifier_history.csv", "classifier_finetune_history.csv",
                     "segmenter_history.csv"):
            if (work / name).exists():
                (work / name).replace(out / name)
        (out / "history.json").write_text(json.dumps({"classifier": c_hist, "segmenter": s_hist}))
        record = {"model_version": version, "dataset_version": dataset_version,
                  "image_size": settings.image_size, "threshold": float(threshold),
                  "threshold_rule": settings.threshold_rule, "backbone": settings.backbone,
                  "keras_backend": keras.backend.backend(),
                  "best_epochs": {"classifier": _best_epoch(c_hist, *CLASSIFIER_MONITOR),
                                  "segmenter": _best_epoch(s_hist, *SEGMENTER_MONITOR)},
                  "weights": weights, "intensity_norm": settings.intensity_norm,
                  "seg_encoder": settings.seg_encoder, "seg_context": settings.seg_context,
                  "created_at": utc_now(), "code_version": code_version(),
                  "train_slices": len(train), "val_slices": len(val),
                  "postprocess": postprocess, "ood": ood_entry}
        (out / "config.json").write_text(json.dumps(
            {"model_version": version, "dataset_version": dataset_version,
             "code_version": code_version(), "training": training_config(settings),
             "settings": settings.public_dict()}, indent=2, default=str))
        models.publish(version, out, record)
        log_training(settings, record, {"classifier": c_hist, "segmenter": s_hist}, out)
    log.info("trained model version %s on %s (threshold %.3f)", version, dataset_version, threshold)
    return record
