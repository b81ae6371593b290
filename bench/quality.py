"""Quality benchmark on the real LGG data: ingest, split by patient, train, evaluate on test
patients.

Profiles:
  cpu  ResNet50 + U-Net at 128x128, sized to finish in under an hour on 2 CPU cores; most of the
       budget goes to the U-Net (it localizes), trained on tumor-oversampled batches with a batch
       Dice + BCE loss and judged each epoch by the validation patients' per-patient Dice.
       It runs through the real pipeline (SeaweedFS on loopback, dataset version, model version),
       and leaves the server's data under --home, so the scoring benchmark can reuse the model:
       `--home H` and the printed model version.
  gpu  256x256, longer schedules; runs from a local array cache (`export-cache` writes it from a
       finished dataset version as xz shards of at most 60 MiB, whole patients each) with
       KERAS_BACKEND=jax, without S3, on a GPU machine: the same recipe as `run` (threshold and
       whole-study post-processing tuned on the validation patients, test patients scored once);
       --out-dir keeps result.json and the plots, not the model.

  python bench/quality.py run DATA [--profile cpu] [--home DIR] [--json OUT]
  python bench/quality.py export-cache --home DIR --out CACHE_DIR [--size 256] [--shard-mib 60]
  python bench/quality.py split-csv --home DIR --out SPLIT.csv [--dataset-version V]
  KERAS_BACKEND=jax python bench/quality.py run-cache CACHE_DIR [--profile gpu] [--out-dir OUT]
  python bench/quality.py seg-ablation DATA --arm seg_context=0 --arm seg_context=1 \
      [--seg-epochs N] [--home DIR] [--json OUT]

seg-ablation compares U-Net options (2.5D input, loss, filters: whatever leaves the classifier
alone) on the validation patients only, at an equal budget: each arm trains the profile's U-Net
with its --set overrides from the same seed, and is judged by the per-patient validation Dice of
its best epoch (the value that checkpoints it), with a paired bootstrap of each arm against the
first. The test patients are dropped before any training. --json is rewritten after each arm,
so a stopped run keeps the arms it finished.

DATA is the LGG archive (lgg-kaggle_3m-dev81.tar.xz) or an unpacked kaggle_3m folder.
Backbone weights: --weights (imagenet or a .h5 file), else BRAIN_TUMOR_WEIGHTS, else none; the
figures and model.json say which were used. --set NAME=VALUE overrides one setting of the
profile (ablations, e.g. --set intensity_norm=volume_percentile, --set seg_context=1 or
--set seg_encoder=backbone); repeatable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from brain_tumor.ml.inputs import ArrayDataset
    from brain_tumor.settings import Settings

PROFILES: dict[str, dict] = {
    # Measured 2026-12-02: a classifier epoch takes about 2 min on the 2 cores, a U-Net epoch
    # (with the per-patient validation Dice pass) about 50 s. 8 classifier epochs left it
    # under-trained (validation ROC-AUC 0.83, still rising) and patience 4 stopped the U-Net on
    # a noisy validation Dice: 12 + up to 30 epochs with patience 6 fit in about 50 minutes.
    "cpu": {"image_size": 128, "backbone": "resnet50", "batch_size": 32, "epochs": 12,
            "seg_epochs": 30, "seg_base_filters": 16, "seg_depth": 4, "learning_rate": 1e-3,
            "seg_learning_rate": 1e-3, "warmup_epochs": 1, "early_stopping_patience": 6,
            "reduce_lr_patience": 2, "bootstrap_samples": 1000, "seg_tumor_fraction": 0.5,
            "seg_loss": "batch_dice_bce", "intensity_norm": "none"},
    "gpu": {"image_size": 256, "backbone": "resnet50", "batch_size": 32, "epochs": 40,
            "seg_epochs": 60, "seg_base_filters": 32, "seg_depth": 4, "learning_rate": 1e-3,
            "seg_learning_rate": 1e-3, "warmup_epochs": 2, "early_stopping_patience": 8,
            "reduce_lr_patience": 3, "bootstrap_samples": 1000, "seg_tumor_fraction": 0.5,
            "seg_loss": "batch_dice_bce", "intensity_norm": "none"},
}
WEIGHTS_ENV = "BRAIN_TUMOR_WEIGHTS"
log = logging.getLogger("bench.quality")


def profile_settings(args: argparse.Namespace) -> dict:
    """The profile's settings with --set overrides and the backbone weights to use.

    Weights: --weights, else the BRAIN_TUMOR_WEIGHTS variable, else none (from scratch).
    """
    values = dict(PROFILES[args.profile])
    for item in getattr(args, "set", None) or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--set takes NAME=VALUE, received {item!r}")
        values[name.strip()] = value
    weights = getattr(args, "weights", None) or os.environ.get(WEIGHTS_ENV) or None
    if weights is not None:
        values["weights"] = weights
    return values


def machine() -> dict:
    """What ran the benchmark."""
    model = "unknown"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow")}


def start_logging() -> None:
    """INFO logs with times on stderr; Keras on TensorFlow unless KERAS_BACKEND says otherwise."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def write_json(result: dict, json_path: str) -> str:
    """Write the figures to ``json_path`` (its folder made); the JSON text."""
    text = json.dumps(result, indent=2, default=str)
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(text)
    return text


def emit(result: dict, json_path: str | None, show: str | None = None) -> None:
    """Print the figures (or ``show`` instead) and, given a path, write them there as JSON."""
    text = write_json(result, json_path) if json_path else json.dumps(result, indent=2,
                                                                      default=str)
    print(text if show is None else show)


def peak_rss_gb() -> float:
    """Peak resident memory of this process, GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _server(home: Path):
    from brain_tumor.devtools.embedded_s3 import EmbeddedS3

    return EmbeddedS3(home / "s3", port=int(os.environ.get("BENCH_S3_PORT", "18933")),
                      port_base=int(os.environ.get("BENCH_S3_PORT_BASE", "25000")))


def _settings(server, home: Path, values: dict):
    from brain_tumor.settings import load_settings

    keys = {"s3_access_key_id": server.access_key, "s3_secret_access_key": server.secret_key}
    return load_settings(env={}, s3_endpoint_url=server.endpoint, s3_bucket=server.bucket,
                         home=home, **{**keys, **values})


def _started_server(home: Path):
    server = _server(home)
    server.start()
    return server


def _ingested(settings: Settings, data: Path, timings: dict[str, float]) -> tuple[str, dict]:
    """Upload the export (once), ingest and split it: (dataset version, split summary). Upload
    and ingest seconds go into ``timings``."""
    from brain_tumor import steps
    from brain_tumor.ingest.exports import list_exports, split_archive_name, upload_export

    store = steps.open_store(settings)
    parsed = split_archive_name(data.name)
    export_id = parsed[0] if parsed else data.name
    start = time.perf_counter()
    if export_id not in list_exports(store, settings):
        upload_export(store, settings, data, export_id)
    timings["upload_s"] = time.perf_counter() - start
    start = time.perf_counter()
    version = steps.ingest(settings, [export_id])["dataset_version"]
    timings["ingest_s"] = time.perf_counter() - start
    return version, steps.split(settings, version)


def cmd_run(args: argparse.Namespace) -> dict:
    """The whole pipeline through S3."""
    from brain_tumor import steps
    from brain_tumor.ml.inputs import for_model, load_arrays
    from brain_tumor.ml.predict import load_model_version, predict_dataset
    from brain_tumor.store.modelstore import ModelStore

    home = Path(args.home).resolve()
    values = profile_settings(args)
    settings = _settings(_started_server(home), home, values)
    store = steps.open_store(settings)
    t = {}
    version, split = _ingested(settings, Path(args.data), t)
    start = time.perf_counter()
    record = steps.train(settings, version, verbose=2)
    t["train_s"] = time.perf_counter() - start
    history = json.loads(store.get(ModelStore(store, settings).key(record["model_version"],
                                                                   "history.json")))
    start = time.perf_counter()
    result = steps.evaluate(settings, record["model_version"], version)
    t["evaluate_s"] = time.perf_counter() - start
    metrics = ModelStore(store, settings).evaluation(record["model_version"], version)
    test = load_arrays(store, settings, version, settings.image_size).subset("test")
    model = load_model_version(store, settings, record["model_version"])
    start = time.perf_counter()
    test = for_model(test, model.record)
    predict_dataset(model, test, settings.batch_size)
    infer_s = time.perf_counter() - start
    epochs = {k: len(v.get("loss", [])) for k, v in history.items()}
    return {
        "profile": args.profile, "settings": values, "machine": machine(),
        "weights": record.get("weights"), "intensity_norm": record.get("intensity_norm"),
        "home": str(home), "dataset_version": version, "model_version": record["model_version"],
        "split": split["splits"], "timings_s": {k: round(v, 1) for k, v in t.items()},
        "epochs_run": epochs,
        "train_images_per_s": round(record["train_slices"] * (epochs["classifier"]
                                    + epochs["segmenter"]) / t["train_s"], 2),
        "inference_images_per_s": round(len(test) / infer_s, 2),
        "peak_rss_gb": round(peak_rss_gb(), 2), "headline": result, "metrics": metrics,
        "best_epochs": record["best_epochs"], "threshold": record["threshold"],
    }


def cmd_export_cache(args: argparse.Namespace) -> dict:
    """Write the decoded arrays of a finished dataset version as shards (for the GPU profile)."""
    from array_cache import write_shards

    from brain_tumor import steps
    from brain_tumor.ml.inputs import load_arrays
    from brain_tumor.store.datasets import DatasetStore

    home = Path(args.home).resolve()
    settings = _settings(_started_server(home), home, PROFILES["gpu"])
    store = steps.open_store(settings)
    version = DatasetStore(store, settings).resolve(args.dataset_version)
    arrays = load_arrays(store, settings, version, args.size, progress=True)
    paths = write_shards(arrays, Path(args.out), int(args.shard_mib * 2**20), version)
    return {"out": args.out, "slices": len(arrays), "shards": len(paths),
            "bytes": sum(p.stat().st_size for p in paths)}


def cmd_split_csv(args: argparse.Namespace) -> dict:
    """Write a finished dataset version's split as CSV (patient_id, split), for the scripts that
    read patients from the archive without S3 (``bench/ood.py --split``,
    ``bench/ood_design.py --split``)."""
    from brain_tumor import steps
    from brain_tumor.store.datasets import DatasetStore

    home = Path(args.home).resolve()
    settings = _settings(_started_server(home), home, PROFILES["cpu"])
    datasets = DatasetStore(steps.open_store(settings), settings)
    version = datasets.resolve(args.dataset_version)
    split = datasets.split(version)[["patient_id", "split"]].sort_values(["split", "patient_id"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    split.to_csv(args.out, index=False)
    return {"out": args.out, "dataset_version": version,
            "patients": split["split"].value_counts().sort_index().to_dict()}


def evaluate_cached(arrays: ArrayDataset, settings: Settings, out_dir: Path | None = None
                    ) -> dict:
    """Train both models on the cached train patients, tune the post-processing and the
    threshold on its validation patients, and evaluate once on its test patients — the recipe
    ``brain-tumor train`` + ``evaluate`` run, without S3. Plots go to ``out_dir``."""
    import keras

    from brain_tumor.evaluation.evaluate import Predictions, evaluate
    from brain_tumor.evaluation.metrics import choose_threshold
    from brain_tumor.evaluation.report import write_plots
    from brain_tumor.evaluation.tuning import tune_on_validation
    from brain_tumor.ml.predict import LoadedModel, predict_dataset
    from brain_tumor.ml.train import train_classifier, train_segmenter
    from brain_tumor.scoring.postprocess import postprocess_groups, rule_from_record, tumor_score

    keras.utils.set_random_seed(settings.train_seed)
    train, val, test = (arrays.subset(s) for s in ("train", "val", "test"))
    t = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        clf, c_hist = train_classifier((train, val), settings, Path(tmp), verbose=2)
        seg, s_hist = train_segmenter((train, val), settings, Path(tmp), verbose=2, classifier=clf)
        t["train_s"] = time.perf_counter() - start
    val_prob = clf.predict(val.images.astype("float32"), batch_size=settings.batch_size,
                           verbose=0).reshape(-1)
    threshold = choose_threshold(val.labels, val_prob, settings.threshold_rule)
    tuned = tune_on_validation(val, val_prob, seg, threshold, settings)
    rule = rule_from_record(tuned, settings.mask_threshold)
    start = time.perf_counter()
    model = LoadedModel("bench-cache", {"image_size": settings.image_size,
                                        "threshold": float(threshold)}, clf, seg)
    prob, maps = predict_dataset(model, test, settings.batch_size)
    t["inference_s"] = time.perf_counter() - start
    size = test.masks.shape[1]
    label, pred_masks, _ = postprocess_groups(rule, prob, maps, [(size, size)] * len(test),
                                              test.patient_ids, test.slice_index, threshold)
    preds = Predictions(test.patient_ids, test.labels, prob, list(test.masks.astype(bool)),
                        pred_masks, test.slice_index, label=label, score=tumor_score(prob, maps))
    metrics = evaluate(preds, threshold, model_version="bench-cache", dataset_version="cache",
                       n_boot=settings.bootstrap_samples, seed=settings.train_seed,
                       postprocess={"rule": rule.name, "params": rule.params()})
    plots = []
    if out_dir is not None:
        plots = [str(p) for p in write_plots(metrics, preds, Path(out_dir) / "plots",
                                             images=test.images)]
    epochs = {"classifier": len(c_hist.get("loss", [])), "segmenter": len(s_hist.get("loss", []))}
    return {"timings_s": {k: round(v, 1) for k, v in t.items()}, "epochs_run": epochs,
            "train_images_per_s": round(len(train) * sum(epochs.values()) / t["train_s"], 2),
            "inference_images_per_s": round(len(test) / t["inference_s"], 2),
            "postprocess": tuned, "threshold": float(threshold), "metrics": metrics,
            "plots": plots, "history": {"classifier": c_hist, "segmenter": s_hist},
            "val_patients": int(len(np.unique(val.patient_ids))),
            "test_patients": int(len(np.unique(test.patient_ids)))}


def cmd_run_cache(args: argparse.Namespace) -> dict:
    """Train and evaluate from an array cache, without S3 (GPU machines with JAX only)."""
    from array_cache import read_shards

    from brain_tumor.ml.inputs import add_context, normalize_dataset
    from brain_tumor.ml.train import weights_provenance
    from brain_tumor.settings import load_settings

    arrays, version = read_shards(Path(args.cache))
    values = profile_settings(args)
    settings = load_settings(env={}, keras_backend=os.environ.get("KERAS_BACKEND", "tensorflow"),
                             **{**values, "image_size": int(arrays.images.shape[1])})
    weights = weights_provenance(settings.weights)
    arrays = add_context(normalize_dataset(arrays, settings.intensity_norm), settings.seg_context)
    out_dir = Path(args.out_dir) if args.out_dir else None
    result = {"profile": args.profile, "settings": values, "machine": machine(),
              "dataset_version": version, "weights": weights,
              "intensity_norm": settings.intensity_norm,
              "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
              **evaluate_cached(arrays, settings, out_dir),
              "peak_rss_gb": round(peak_rss_gb(), 2)}
    if out_dir is not None:
        emit(result, str(out_dir / "result.json"), show="")
    return result


def parse_arm(text: str) -> dict[str, str]:
    """One ablation arm: comma-separated NAME=VALUE overrides ('' or 'baseline': none)."""
    arm: dict[str, str] = {}
    if text.strip() in ("", "baseline"):
        return arm
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--arm takes NAME=VALUE[,NAME=VALUE...], received {text!r}")
        arm[name.strip()] = value.strip()
    return arm


def check_arm(values: dict, arm: dict[str, str]) -> None:
    """Exit with the reason when an arm's settings are invalid or it is not a U-Net option."""
    from brain_tumor.settings import SettingsError, load_settings

    try:
        settings = load_settings(env={}, **{**values, **arm})
    except SettingsError as exc:
        raise SystemExit(f"--arm {arm}: {exc}") from None
    if settings.seg_encoder != "unet":
        raise SystemExit(f"--arm {arm}: seg-ablation trains the U-Net alone; seg_encoder "
                         "'backbone' needs the trained classifier (compare it with `run`)")


def paired_difference(first: dict[str, float], other: dict[str, float], n_boot: int,
                      seed: int) -> dict[str, float | None]:
    """Mean per-patient difference other - first and its 95% bootstrap interval over patients."""
    from brain_tumor.evaluation.metrics import bootstrap_ci

    names = sorted(first)
    if sorted(other) != names:
        raise ValueError(f"arms scored different patients: {names} and {sorted(other)}")
    diff = np.array([other[n] - first[n] for n in names])
    low, high = bootstrap_ci(names, lambda idx: float(np.mean(diff[idx])), n_boot, seed)
    return {"mean": round(float(diff.mean()), 4), "ci_low": low, "ci_high": high,
            "patients_better": int(np.sum(diff > 0)), "patients_worse": int(np.sum(diff < 0))}


def train_arm(train: ArrayDataset, val: ArrayDataset, settings: Settings) -> dict:
    """Train the U-Net of ``settings`` on the training slices; its validation figures."""
    import keras

    from brain_tumor.ml.callbacks import patient_dice_scores
    from brain_tumor.ml.inputs import add_context, normalize_dataset
    from brain_tumor.ml.train import train_segmenter

    train, val = (add_context(normalize_dataset(d, settings.intensity_norm), settings.seg_context)
                  for d in (train, val))
    keras.utils.set_random_seed(settings.train_seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model, history = train_segmenter((train, val), settings, Path(tmp), verbose=2)
    train_s = time.perf_counter() - start
    maps = np.asarray(model.predict(val.segmenter_images().astype("float32"),
                                    batch_size=settings.batch_size, verbose=0))
    pred = maps.reshape(val.masks.shape) >= settings.mask_threshold
    per_patient = patient_dice_scores(val.patient_ids, val.masks, pred)
    curve = [round(float(v), 4) for v in history.get("val_patient_dice", [])]
    return {"val_patient_dice_mean": round(float(np.mean(list(per_patient.values()))), 4),
            "val_patient_dice_median": round(float(np.median(list(per_patient.values()))), 4),
            "best_epoch": int(np.argmax(curve)) + 1 if curve else None,
            "epochs_run": len(history.get("loss", [])), "val_patient_dice_by_epoch": curve,
            "train_s": round(train_s, 1), "per_patient": per_patient}


def cmd_seg_ablation(args: argparse.Namespace) -> dict:
    """U-Net options compared on the validation patients at an equal budget (no test patient)."""
    home = Path(args.home).resolve()
    values = profile_settings(args)
    if args.seg_epochs:
        values["seg_epochs"] = args.seg_epochs
    arms = [parse_arm(a) for a in args.arm] or [{}]
    for arm in arms:  # every arm checked before hours of training, not when its turn comes
        check_arm(values, arm)
    from brain_tumor import steps
    from brain_tumor.ml.inputs import load_arrays  # Keras: after the checks, not before

    server = _started_server(home)
    settings = _settings(server, home, values)
    t: dict[str, float] = {}
    version, split = _ingested(settings, Path(args.data), t)
    arrays = load_arrays(steps.open_store(settings), settings, version, settings.image_size,
                         progress=True)
    train, val = arrays.subset("train"), arrays.subset("val")
    del arrays  # the test patients are never read past this point
    result = {"profile": args.profile, "settings": values, "machine": machine(),
              "dataset_version": version, "split": split["splits"],
              "train_slices": len(train), "val_slices": len(val),
              "val_patients": int(len(np.unique(val.patient_ids))), "arms": [],
              "arms_planned": len(arms), "timings_s": {k: round(v, 1) for k, v in t.items()}}
    for arm in arms:
        log.info("arm %s: training the U-Net (%s epochs at most)", arm or "baseline",
                 values["seg_epochs"])
        row = {"arm": arm, **train_arm(train, val, _settings(server, home, {**values, **arm}))}
        if result["arms"]:
            row["difference_to_first"] = paired_difference(
                result["arms"][0]["per_patient"], row["per_patient"],
                settings.bootstrap_samples, settings.train_seed)
        result["arms"].append(row)
        if args.json:  # each finished arm is kept, should a later one be stopped
            write_json(result, args.json)
    return {**result, "peak_rss_gb": round(peak_rss_gb(), 2)}


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help=f"backbone weights: imagenet or a .h5 file (default: "
                                     f"${WEIGHTS_ENV}, else none)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="override one setting of the profile (repeatable)")


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="the whole pipeline through S3")
    p.add_argument("data", help="LGG archive or unpacked kaggle_3m folder")
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--home", default="bench/results/quality-home",
                   help="server data, caches (kept for the scoring benchmark)")
    p.add_argument("--json", help="also write the figures here")
    _model_options(p)
    p = sub.add_parser("export-cache", help="arrays of a dataset version -> a folder of shards")
    p.add_argument("--home", default="bench/results/quality-home")
    p.add_argument("--dataset-version")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--out", required=True, help="folder for the shards and index.json")
    p.add_argument("--shard-mib", type=float, default=60.0,
                   help="largest shard, MiB (a device call carries at most 64 MiB)")
    p = sub.add_parser("split-csv", help="a dataset version's split -> patient_id,split CSV")
    p.add_argument("--home", default="bench/results/quality-home")
    p.add_argument("--dataset-version", help="default: the newest (HEAD)")
    p.add_argument("--out", required=True)
    p.add_argument("--json", help="also write the summary here")
    p = sub.add_parser("run-cache", help="train + evaluate from a shard folder, no S3")
    p.add_argument("cache", help="folder written by export-cache, or one shard")
    p.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    p.add_argument("--json")
    p.add_argument("--out-dir", help="write result.json and the evaluation plots here")
    _model_options(p)
    p = sub.add_parser("seg-ablation", help="U-Net options compared on validation patients")
    p.add_argument("data", help="LGG archive or unpacked kaggle_3m folder")
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--home", default="bench/results/quality-home")
    p.add_argument("--arm", action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE]",
                   help="one arm's overrides on top of the profile ('baseline': none); "
                        "repeatable, the first is the reference of the paired differences")
    p.add_argument("--seg-epochs", type=int, help="the U-Net's epoch budget for every arm "
                                                  "(default: the profile's)")
    p.add_argument("--json", help="also write the figures here")
    _model_options(p)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    fn = {"run": cmd_run, "export-cache": cmd_export_cache, "run-cache": cmd_run_cache,
          "seg-ablation": cmd_seg_ablation, "split-csv": cmd_split_csv}[args.cmd]
    result = fn(args)
    emit(result, getattr(args, "json", None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
