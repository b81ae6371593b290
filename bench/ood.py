"""Out-of-distribution benchmark on the real LGG data: false flags on unseen patients, foreign
studies caught, and what the check costs.

  python bench/ood.py DATA --model-version M [--home DIR] [--engine auto|onnx|keras] [--refit]
      [--json OUT]
  python bench/ood.py DATA --split SPLIT.csv [--size 128] [--norm none] [--json OUT]

DATA is the LGG archive or an unpacked kaggle_3m folder; --home and --model-version name what
`bench/quality.py run --home DIR` left (its SeaweedFS data holds the dataset's split and the model
version with its reference, ``ood.npz``, fitted on the training patients and bounded on the
validation patients at training time). Nothing here chooses anything: the bounds are the model
version's. ``--refit`` instead fits the reference with the current code in memory, as training
would (``ood_max_train_slices`` of the training patients' slices sampled with ``train_seed``,
bounds at ``ood_slice_rate`` on the validation patients, ``ood_study_share``, the study detector
and the geometry criterion on every training slice by patient bounded at ``ood_study_rate``
(shared between them) on out-of-fold training and validation patients, the model version's
``intensity_norm``), from the model version's train and validation patients read from DATA and
passed through the engine: for a version whose stored ``ood.npz`` the current statistics do not
match. Only the patients each phase needs are unpacked.

For each **test** patient of the model's dataset version (never used by the reference), the
study's slices go through the engine and ``brain_tumor.scoring.study.ood_check``, exactly as
scoring does. Reported: test patients flagged, the share of test slices flagged (95% Wilson
interval, and a bootstrap interval over patients), and, for each foreign kind of
``brain_tumor.devtools.synth_foreign`` made from each test study, the share of studies flagged.
Cost: the check's time (input statistics + distances) against the engine's predict time on the
same studies (a share of the model time alone, so an upper bound of its share end to end).

``--split`` (no model, no server): the check without its features detector — the input
statistics' slice detector, the study detector and the geometry criterion, none of which reads
the model — fitted as training fits them from the train and validation patients a split file
names (columns ``patient_id``, ``split``; ``bench/quality.py split-csv`` writes one), with the
default settings' rates, on the model input at ``--size`` mapped with ``--norm``; then the
same figures on its test patients. What it reports is what the model-free part of the check
does: a flag here is a flag of the whole check, which can only add flags (the features).
"""

from __future__ import annotations

import argparse
import logging
import math
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from quality import PROFILES, _server, _settings, emit, machine, start_logging


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_share(flags: list[np.ndarray], samples: int = 1000, seed: int = 0) -> list[float]:
    """95% interval of the pooled flagged-slice share, resampling patients."""
    rng = np.random.default_rng(seed)
    shares = []
    for _ in range(samples):
        pick = rng.integers(0, len(flags), len(flags))
        pooled = np.concatenate([flags[i] for i in pick])
        shares.append(float(pooled.mean()))
    return [float(np.quantile(shares, 0.025)), float(np.quantile(shares, 0.975))]


def unpack_patients(data: Path, workdir: Path, patients: list[str]) -> Path:
    """The kaggle_3m folder holding these patients' folders: data itself, or only their files
    unpacked from the archive into workdir (no other patient's slice leaves the archive)."""
    if data.is_dir():
        return data
    wanted = set(patients)
    with tarfile.open(data) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and len(Path(m.name).parts) >= 2
                   and Path(m.name).parts[-2] in wanted]
        tf.extractall(workdir, members=members, filter="data")
    folders = {p.name: p.parent for p in workdir.rglob("*") if p.is_dir() and p.name in wanted}
    missing = sorted(wanted - set(folders))
    if missing:
        raise SystemExit(f"{data}: no slices of {len(missing)} patients, e.g. {missing[:3]}")
    return next(iter(folders.values()))


def patient_values(engine: Any, images: list[np.ndarray], size: int, norm: str) -> dict:
    """One study's input statistics, features and probabilities, as scoring computes them, and
    the engine's and the statistics' seconds; with ``engine`` None, the input statistics alone."""
    from brain_tumor.scoring import ood
    from brain_tumor.scoring.engines import study_input

    values: dict[str, Any] = {"predict_s": 0.0}
    if engine is not None:
        clock = time.perf_counter()
        raw = engine.predict(images)
        values["predict_s"] = time.perf_counter() - clock
        values.update(features=np.asarray(raw.features, np.float64),
                      prob=np.asarray(raw.prob, np.float64))
    clock = time.perf_counter()
    values["input"] = ood.input_statistics(study_input(images, size, norm))
    values["stats_s"] = time.perf_counter() - clock
    return values


def refit_reference(train: list[dict], validation: list[dict], settings: Any, norm: str,
                    slice_rate: float, study_share: float, study_rate: float) -> Any:
    """A reference fitted as training fits it: sampled training slices, validation bounds, the
    study detector on every training slice by patient (``study_rate``, folds by ``train_seed``).
    Values without features (``patient_values`` without an engine) give no features detector."""
    from brain_tumor.ml.ood_reference import sample_rows
    from brain_tumor.scoring import ood

    rows = sample_rows(sum(len(v["input"]) for v in train), settings.ood_max_train_slices,
                       settings.train_seed)
    names = [k for k in ("input", "features") if k in train[0]]
    fit = {k: np.concatenate([v[k] for v in train])[rows] for k in names}
    bound = {k: np.concatenate([v[k] for v in validation]) for k in names}
    prob = (np.concatenate([v["prob"] for v in validation]) if "prob" in validation[0]
            else None)
    return ood.fit_reference(fit, bound, slice_rate=slice_rate, study_share=study_share,
                             validation_prob=prob,
                             input_norm=norm, study_rate=study_rate,
                             train_patients=_patient_rows(train),
                             validation_patients=_patient_rows(validation),
                             study_train=np.concatenate([v["input"] for v in train]),
                             seed=settings.train_seed)


def refit_from_folder(engine: Any, root: Path, train_ids: list[str], val_ids: list[str],
                      settings: Any, size: int, norm: str) -> Any:
    """``refit_reference`` on the training and validation patients' TIFF studies under root,
    with the settings' rates (as training fits it, with the current code)."""
    return refit_reference(read_values(engine, root, train_ids, size, norm, "fit train"),
                           read_values(engine, root, val_ids, size, norm, "fit validation"),
                           settings, norm, settings.ood_slice_rate, settings.ood_study_share,
                           settings.ood_study_rate)


def _patient_rows(values: list[dict]) -> np.ndarray:
    """The patient id of each slice of the studies' values, in their order."""
    return np.concatenate([[v["patient"]] * len(v["input"]) for v in values])


def read_split(path: Path) -> dict[str, list[str]]:
    """The patient ids of each split of a split CSV (columns patient_id, split), each sorted."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"patient_id", "split"} <= set(rows[0]):
        raise SystemExit(f"{path}: need the columns patient_id and split, received "
                         f"{list(rows[0]) if rows else 'no rows'}")
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row["split"], []).append(row["patient_id"])
    return {k: sorted(v) for k, v in out.items()}


def split_patients(store: Any, settings: Any, record: dict, split_name: str) -> list[str]:
    """The model version's dataset patients of one split, sorted."""
    from brain_tumor.store.datasets import DatasetStore

    split = DatasetStore(store, settings).split(record["dataset_version"])
    return sorted(split.loc[split["split"] == split_name, "patient_id"])


def read_values(engine: Any, root: Path, patients: list[str], size: int, norm: str,
                what: str) -> list[dict]:
    """``patient_values`` of each patient's TIFF study under root."""
    from brain_tumor.devtools.synth_dicom import tiff_slices

    out = []
    for n, pid in enumerate(patients, 1):
        out.append({"patient": pid, **patient_values(engine, tiff_slices(root / pid), size,
                                                     norm)})
        logging.info("%s %d/%d %s: %d slices", what, n, len(patients), pid, len(out[-1]["input"]))
    return out


def judge_patients(root: Path, patients: list[str], judge: Callable) -> dict:
    """Each patient's TIFF study under root and each foreign kind made from it, through
    ``judge(study_id, images) -> (OodResult, predict_s, check_s)``: the per-patient rows, the
    slice flags, the foreign studies flagged by kind and the seconds."""
    from brain_tumor.devtools.synth_dicom import tiff_slices
    from brain_tumor.devtools.synth_foreign import FOREIGN_KINDS, foreign_slices

    per_patient, slice_flags, foreign = [], [], {k: [] for k in FOREIGN_KINDS}
    predict_s = check_s = 0.0
    for n, pid in enumerate(patients, 1):
        images = tiff_slices(root / pid)
        result, spent_predict, spent_check = judge(pid, images)
        predict_s, check_s = predict_s + spent_predict, check_s + spent_check
        slice_flags.append(result.slice_flag)
        per_patient.append({
            "patient": pid, "slices": len(images), "flagged": result.flagged,
            "score": round(result.score, 3), "slices_flagged": int(result.slice_flag.sum()),
            "study_distance": (None if result.study_distance is None
                               else round(result.study_distance, 3)),
            "by_study_distance": any(r["statistic"] == "study_distance"
                                     for r in result.reasons),
            "geometry_score": (None if result.geometry_score is None
                               else round(result.geometry_score, 3)),
            "by_geometry": any(r["statistic"].endswith("_robust_z") for r in result.reasons)})
        for kind in FOREIGN_KINDS:
            odd, _, _ = judge(f"{pid}-{kind}", foreign_slices(kind, images, seed=n))
            foreign[kind].append(odd.flagged)
        logging.info("%d/%d %s: flagged %s (%d of %d slices)", n, len(patients), pid,
                     result.flagged, int(result.slice_flag.sum()), len(images))
    return {"per_patient": per_patient, "slice_flags": slice_flags, "foreign": foreign,
            "predict_s": predict_s, "check_s": check_s}


def figures(reference: Any, judged: dict) -> dict:
    """The reported figures of ``judge_patients``'s output under ``reference``."""
    from brain_tumor.ml.ood_reference import reference_bounds

    per_patient, slice_flags = judged["per_patient"], judged["slice_flags"]
    pooled = np.concatenate(slice_flags)
    k, total = int(pooled.sum()), len(pooled)
    out = {
        "input_norm": reference.input_norm, "bounds": reference_bounds(reference),
        "geometry_bound": (None if reference.geometry is None
                           else round(reference.geometry.bound, 3)),
        "slice_rate": reference.slice_rate, "study_share": reference.study_share,
        "study_rate": reference.study_rate,
        "test_patients_flagged_by_study_distance": sum(p["by_study_distance"]
                                                       for p in per_patient),
        "test_patients_flagged_by_geometry": sum(p["by_geometry"] for p in per_patient),
        "test_patients": len(per_patient),
        "test_patients_flagged": sum(p["flagged"] for p in per_patient),
        "test_slices": total, "test_slices_flagged": k,
        "test_slice_share": k / total, "test_slice_share_wilson95": list(wilson(k, total)),
        "test_slice_share_bootstrap95": bootstrap_share(slice_flags),
        "foreign_flagged_share": {kind: float(np.mean(v))
                                  for kind, v in judged["foreign"].items()},
        "check_s": round(judged["check_s"], 3), "patients": per_patient,
    }
    if judged["predict_s"] > 0:
        out.update(predict_s=round(judged["predict_s"], 3),
                   check_share_of_model_time=round(judged["check_s"] / judged["predict_s"], 4))
    return out


def run(args: argparse.Namespace) -> dict:
    """The benchmark on a model version (see the module docstring)."""
    from brain_tumor import steps
    from brain_tumor.ml.normalize import record_method
    from brain_tumor.ml.ood_reference import load_reference
    from brain_tumor.scoring.contracts import Study
    from brain_tumor.scoring.engines import load_engine
    from brain_tumor.scoring.study import ood_check
    from brain_tumor.store.modelstore import ModelStore

    home = Path(args.home).resolve()
    server = _server(home)
    server.start()
    try:
        settings = _settings(server, home, dict(PROFILES["cpu"])).model_copy(
            update={"engine": args.engine})
        store = steps.open_store(settings)
        record = ModelStore(store, settings).record(args.model_version)
        engine = load_engine(store, settings, args.model_version)
        size, norm = int(record["image_size"]), record_method(record)
        if args.refit:
            with tempfile.TemporaryDirectory(prefix="bench-ood-fit-") as tmp:
                fit_ids = {s: split_patients(store, settings, record, s) for s in ("train", "val")}
                root = unpack_patients(Path(args.data), Path(tmp), [*fit_ids["train"],
                                                                    *fit_ids["val"]])
                reference = refit_from_folder(engine, root, fit_ids["train"], fit_ids["val"],
                                              settings, size, norm)
        else:
            reference = load_reference(store, settings, record)
        if reference is None:
            raise SystemExit(f"model version {args.model_version} has no out-of-distribution "
                             "reference (trained before the check existed?)")

        def judge(study_id: str, images: list[np.ndarray]) -> tuple[Any, float, float]:
            study = Study(study_id, images, list(range(1, len(images) + 1)),
                          [study_id] * len(images))
            clock = time.perf_counter()
            raw = engine.predict(images)
            predict_s = time.perf_counter() - clock
            clock = time.perf_counter()
            result, _ = ood_check(reference, study, raw, size)
            return result, predict_s, time.perf_counter() - clock

        test_ids = split_patients(store, settings, record, "test")
        with tempfile.TemporaryDirectory(prefix="bench-ood-") as tmp:
            root = unpack_patients(Path(args.data), Path(tmp), test_ids)
            judged = judge_patients(root, test_ids, judge)
    finally:
        server.stop()
    return {"machine": machine(), "model_version": args.model_version, "engine": args.engine,
            "reference": "refitted by this run" if args.refit else "the model version's ood.npz",
            **figures(reference, judged)}


def run_without_model(args: argparse.Namespace) -> dict:
    """The model-free part of the check on a split file's patients (``--split``)."""
    from brain_tumor.scoring import ood
    from brain_tumor.scoring.engines import study_input
    from brain_tumor.settings import load_settings

    split = read_split(Path(args.split))
    ids = {name: split.get(name, []) for name in ("train", "val", "test")}
    if set(ids["test"]) & set(ids["train"] + ids["val"]) or not all(ids.values()):
        raise SystemExit(f"{args.split}: need train, val and test patients, no patient in two "
                         f"splits; received {({k: len(v) for k, v in ids.items()})}")
    settings = load_settings(env={})
    with tempfile.TemporaryDirectory(prefix="bench-ood-fit-") as tmp:
        root = unpack_patients(Path(args.data), Path(tmp), ids["train"] + ids["val"])
        reference = refit_reference(
            read_values(None, root, ids["train"], args.size, args.norm, "fit train"),
            read_values(None, root, ids["val"], args.size, args.norm, "fit validation"),
            settings, args.norm, settings.ood_slice_rate, settings.ood_study_share,
            settings.ood_study_rate)

    def judge(study_id: str, images: list[np.ndarray]) -> tuple[Any, float, float]:
        clock = time.perf_counter()
        values = {"input": ood.input_statistics(study_input(images, args.size, args.norm))}
        return ood.check(reference, values), 0.0, time.perf_counter() - clock

    with tempfile.TemporaryDirectory(prefix="bench-ood-") as tmp:
        root = unpack_patients(Path(args.data), Path(tmp), ids["test"])
        judged = judge_patients(root, ids["test"], judge)
    return {"machine": machine(), "model_version": None, "split": str(args.split),
            "size": args.size,
            "reference": "refitted by this run on input statistics alone (no features detector)",
            "train_patients": len(ids["train"]), "validation_patients": len(ids["val"]),
            **figures(reference, judged)}


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="LGG archive or unpacked kaggle_3m folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-version", help="a model version under --home")
    source.add_argument("--split", help="a split CSV (patient_id, split): the model-free part of "
                                        "the check, no server")
    parser.add_argument("--home", default="bench/results/quality-home",
                        help="server data of bench/quality.py run")
    parser.add_argument("--engine", default="auto", choices=("auto", "onnx", "openvino", "keras"))
    parser.add_argument("--refit", action="store_true",
                        help="fit the reference with the current code from the version's train "
                             "and validation patients instead of reading its ood.npz")
    parser.add_argument("--size", type=int, default=PROFILES["cpu"]["image_size"],
                        help="with --split: the model input's size")
    parser.add_argument("--norm", default="none", help="with --split: the intensity mapping "
                                                       "of the model input (intensity_norm)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.split and args.refit:
        parser.error("--refit refits a model version's reference; --split has no model")
    start_logging()
    emit(run_without_model(args) if args.split else run(args), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
