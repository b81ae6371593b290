"""Choosing the out-of-distribution check's settings on non-test data only.

  python bench/ood_design.py DATA --model-version M [--home DIR] [--engine auto|onnx|keras]
      [--folds 5] [--values FILE] [--json OUT]
  python bench/ood_design.py DATA --split SPLIT.csv [--size 128] [--norm none] [--folds 5]
      [--json OUT]

DATA, --home and --model-version as for ``bench/ood.py``. Only the model version's **train**
and **validation** patients are unpacked, read and scored; its test patients never are (they
are not even taken out of the archive). Each study goes through the engine (features) and the
current input statistics on the model's actual input (``bench/ood.py::patient_values``).

- **False flags by cross-fitting**: the training patients are dealt into ``--folds`` folds;
  for each fold, a reference is fitted on the other folds' slices (as training fits it,
  ``ood_max_train_slices`` sampled with ``train_seed``) and bounded on the validation patients'
  slices, and the held-out fold's patients are checked. Every training patient is held out once,
  so each is judged by a reference that never saw it, as a new patient would be.
- **Foreign studies**: the reference fitted on all training patients (bounded on validation)
  checks each kind of ``brain_tumor.devtools.synth_foreign`` made from each validation patient.
- **Study detector** (``ood_study_rate``): each fold's reference also holds a study detector
  fitted on the other folds' patients and bounded on *their* out-of-fold distances (folds
  within them) and the validation patients', so a held-out patient is outside both its fit
  and its bound (a nested cross-fit); the full reference's catches the foreign studies.

The slice rules for every pair of ``ood_slice_rate`` (the share of validation slices over each
bound) and ``ood_study_share`` (the share of a study's slices that flags it) in the grid below. The
choice (``chosen``): among pairs that meet the in-distribution goals on the held-out patients (at
most 1 / 12 of them flagged, at most 5% of their slices), the one that catches the most foreign
studies; ties go to the fewest held-out patients flagged, then the larger slice rate, then the
smaller study share (the more sensitive). ``foreign_goal_met`` names the kinds caught in at least
95% of studies at the choice. Then, at that pair, each ``ood_study_rate`` of ``STUDY_RATES`` with
the study detector added (``study_grid``): among rates that keep the held-out patients flagged (by
either rule) within the patient goal, the one that catches the most foreign studies; ties go to the
fewest held-out patients flagged, then the smaller rate (``study_chosen``).
``study_distances``: each group's study distance over its bound at rate 0.05. Cost: the
statistics' time against the engine's.

The study grid includes the geometry criterion (``ood.GeometryCheck``), which takes
``ood.GEOMETRY_SHARE`` of each study rate; ``heldout_patients_flagged_by_geometry`` counts the
held-out patients it flags.

**Geometry design** (``--split``, no model, no server): the study-level criteria on input
statistics alone. SPLIT.csv (columns ``patient_id``, ``split``) names the patients; only its
``train`` and ``val`` patients are read (``test`` ones never are). Each study's slices (TIFFs
without ``_mask``, by slice number) become the model input as scoring makes it
(``engines.study_input(images, --size, --norm)``) and its input statistics. Reported, for each
study rate of ``STUDY_RATES``: the geometry criterion's false flags on held-out in-distribution
studies (nested cross-fit over the training and validation patients together: each fold's
patients judged by a criterion fitted and bounded on the other folds' training and validation
patients, at ``GEOMETRY_SHARE`` of the rate), the study detector's (the rest of the rate) and
the two together; and the share of each foreign kind made from the validation studies caught by
the criteria fitted on all training patients (bounded with the validation patients). With the
robust z of each geometry statistic: the training studies' median and spread, and the smallest
|z| of the rotated and cropped studies.

``--values FILE`` keeps the per-study statistics, features and probabilities (train,
validation, foreign) in FILE (outside the repository: they are derived from the data) and reads
them from there when it exists, so the fitting and choosing can be re-run without the engine;
delete it when the statistics change.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from ood import (
    patient_values,
    read_split,
    read_values,
    refit_reference,
    split_patients,
    unpack_patients,
)
from quality import PROFILES, _server, _settings, emit, machine, start_logging

SLICE_RATES = (0.002, 0.005, 0.01, 0.02, 0.05)
STUDY_SHARES = (0.3, 0.4, 0.5, 0.6, 0.75)
#: ``ood_study_rate``: share of held-out in-distribution studies over the study bound
STUDY_RATES = (0.01, 0.02, 0.03, 0.05, 0.08, 0.1)
#: in-distribution goals (per patient, per slice) and the foreign goal the choice is held to
PATIENT_GOAL, SLICE_GOAL, FOREIGN_GOAL = 1 / 12, 0.05, 0.95


def folds_of(patients: list[str], folds: int, seed: int) -> list[list[str]]:
    """Patients dealt into folds after a seeded shuffle."""
    order = list(np.random.default_rng(seed).permutation(len(patients)))
    return [[patients[i] for i in order[k::folds]] for k in range(folds)]


def flags(reference: Any, values: list[dict], slice_rate: float, study_share: float,
          validation: dict[str, np.ndarray],
          study_rate: float | None = None) -> list[tuple[bool, np.ndarray]]:
    """(study flagged, slice flags) of each study under bounds at slice_rate and study_share,
    and the study detector's bound at study_rate (None: the slice rules alone)."""
    return [(r.flagged, r.slice_flag) for r in results(reference, values, slice_rate,
                                                        study_share, validation, study_rate)]


def results(reference: Any, values: list[dict], slice_rate: float, study_share: float,
            validation: dict[str, np.ndarray], study_rate: float | None) -> list[Any]:
    """``ood.check`` of each study under these bounds (see ``flags``)."""
    from dataclasses import replace

    from brain_tumor.scoring import ood

    for det in reference.detectors:
        ood.set_bound(det, validation[det.name], slice_rate)
    reference.study_share = study_share
    if study_rate is None:
        reference = replace(reference, study=None, geometry=None)
    else:
        reference.set_study_rate(study_rate)
    return [ood.check(reference, {k: v[k] for k in ("input", "features")}) for v in values]


FIELDS = ("input", "features", "prob", "predict_s", "stats_s")


def save_values(path: Path, groups: dict[str, list[dict]]) -> None:
    """Write each group's per-study values to one ``.npz``."""
    arrays: dict[str, np.ndarray] = {}
    for group, values in groups.items():
        arrays[f"{group}__count"] = np.array(len(values))
        for i, v in enumerate(values):
            arrays[f"{group}__{i}__patient"] = np.array(v.get("patient", ""))
            for key in FIELDS:
                arrays[f"{group}__{i}__{key}"] = np.asarray(v[key])
    np.savez_compressed(path, **arrays)


def load_values(path: Path) -> dict[str, list[dict]]:
    """The groups written by ``save_values``."""
    with np.load(path, allow_pickle=False) as z:
        groups = sorted({k.split("__", 1)[0] for k in z.files})
        return {g: [{"patient": str(z[f"{g}__{i}__patient"]),
                     **{key: (z[f"{g}__{i}__{key}"] if z[f"{g}__{i}__{key}"].ndim
                              else float(z[f"{g}__{i}__{key}"])) for key in FIELDS}}
                    for i in range(int(z[f"{g}__count"]))] for g in groups}


def run(args: argparse.Namespace) -> dict:
    """The design bench (see the module docstring)."""
    from brain_tumor import steps
    from brain_tumor.devtools.synth_dicom import tiff_slices
    from brain_tumor.devtools.synth_foreign import FOREIGN_KINDS, foreign_slices
    from brain_tumor.ml.normalize import record_method
    from brain_tumor.scoring.engines import load_engine
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
        train_ids = split_patients(store, settings, record, "train")
        val_ids = split_patients(store, settings, record, "val")
        test_ids = set(split_patients(store, settings, record, "test"))
        if test_ids & set(train_ids + val_ids):
            raise SystemExit("the split puts a patient in test and in train or validation")
        cache = Path(args.values) if args.values else None
        if cache is not None and cache.exists():
            kept = load_values(cache)
            train, val = kept.pop("train"), kept.pop("validation")
            foreign = {kind: kept[kind] for kind in FOREIGN_KINDS}
            if [v["patient"] for v in train + val] != train_ids + val_ids:
                raise SystemExit(f"{cache} holds other patients than this model version's")
        else:
            with tempfile.TemporaryDirectory(prefix="bench-ood-design-") as tmp:
                root = unpack_patients(Path(args.data), Path(tmp), train_ids + val_ids)
                train = read_values(engine, root, train_ids, size, norm, "train")
                val = read_values(engine, root, val_ids, size, norm, "validation")
                foreign = {k: [] for k in FOREIGN_KINDS}
                for n, v in enumerate(val, 1):
                    images = tiff_slices(root / v["patient"])
                    for kind in FOREIGN_KINDS:
                        foreign[kind].append(patient_values(
                            engine, foreign_slices(kind, images, seed=n), size, norm))
                    logging.info("foreign kinds %d/%d made from %s", n, len(val), v["patient"])
            if cache is not None:
                save_values(cache, {"train": train, "validation": val, **foreign})
    finally:
        server.stop()
    validation = {k: np.concatenate([v[k] for v in val]) for k in ("input", "features")}
    by_patient = {v["patient"]: v for v in train}
    folds = folds_of(train_ids, args.folds, settings.train_seed)
    held: dict[tuple[float, float], list[tuple[bool, np.ndarray]]] = {}
    fold_refs = []
    for k, fold in enumerate(folds):
        fit_on = [by_patient[p] for f, other in enumerate(folds) if f != k for p in other]
        ref = refit_reference(fit_on, val, settings, norm, 0.01, 0.5, 0.05)
        fold_refs.append(ref)
        for rate in SLICE_RATES:
            for share in STUDY_SHARES:
                held.setdefault((rate, share), []).extend(
                    flags(ref, [by_patient[p] for p in fold], rate, share, validation))
    full = refit_reference(train, val, settings, norm, 0.01, 0.5, 0.05)
    grid = []
    for rate in SLICE_RATES:
        for share in STUDY_SHARES:
            outcome = held[(rate, share)]
            slices = np.concatenate([f for _, f in outcome])
            caught = {kind: float(np.mean([f for f, _ in flags(full, vals, rate, share,
                                                               validation)]))
                      for kind, vals in foreign.items()}
            grid.append({"slice_rate": rate, "study_share": share,
                         "heldout_patients_flagged": int(sum(f for f, _ in outcome)),
                         "heldout_patient_share": sum(f for f, _ in outcome) / len(outcome),
                         "heldout_slice_share": float(slices.mean()),
                         "foreign_caught": caught, "foreign_min": min(caught.values())})
    ok = [g for g in grid if g["heldout_patient_share"] <= PATIENT_GOAL
          and g["heldout_slice_share"] <= SLICE_GOAL]
    chosen = min(ok, key=lambda g: (-sum(g["foreign_caught"].values()),
                                    g["heldout_patients_flagged"], -g["slice_rate"],
                                    g["study_share"]), default=None)
    per_patient = _per_patient(folds, by_patient, fold_refs, validation, chosen)
    study_grid = _study_grid(folds, by_patient, fold_refs, full, foreign, validation, chosen)
    study_ok = [g for g in study_grid if g["heldout_patient_share"] <= PATIENT_GOAL]
    study_chosen = min(study_ok, key=lambda g: (-sum(g["foreign_caught"].values()),
                                                g["heldout_patients_flagged"], g["study_rate"]),
                       default=None)
    predict_s = sum(v["predict_s"] for v in train + val)
    stats_s = sum(v["stats_s"] for v in train + val)
    return {
        "machine": machine(), "model_version": args.model_version, "engine": args.engine,
        "input_norm": norm, "train_patients": len(train), "validation_patients": len(val),
        "train_slices": int(sum(len(v["prob"]) for v in train)),
        "validation_slices": int(len(validation["input"])), "folds": args.folds,
        "test_patients_read": 0, "goals": {"patient_share": PATIENT_GOAL,
                                           "slice_share": SLICE_GOAL,
                                           "foreign_caught": FOREIGN_GOAL},
        "chosen": None if chosen is None else {
            "slice_rate": chosen["slice_rate"], "study_share": chosen["study_share"],
            "foreign_goal_met": {k: v >= FOREIGN_GOAL
                                 for k, v in chosen["foreign_caught"].items()}},
        "grid": grid, "heldout_patients_at_choice": per_patient,
        "study_chosen": None if study_chosen is None else {
            "study_rate": study_chosen["study_rate"],
            "foreign_goal_met": {k: v >= FOREIGN_GOAL
                                 for k, v in study_chosen["foreign_caught"].items()}},
        "study_grid": study_grid,
        "study_distances": _study_distances(folds, by_patient, fold_refs, full, val, foreign),
        "stats_s": round(stats_s, 3), "predict_s": round(predict_s, 3),
        "stats_share_of_model_time": round(stats_s / predict_s, 4),
    }


def _per_patient(folds: list[list[str]], by_patient: dict, refs: list, validation: dict,
                 chosen: dict | None) -> list[dict]:
    """Each held-out training patient's slices over a bound and flag at the chosen pair."""
    if chosen is None:
        return []
    out = []
    for fold, ref in zip(folds, refs, strict=True):
        values = [by_patient[p] for p in fold]
        for p, (flag, sl) in zip(fold, flags(ref, values, chosen["slice_rate"],
                                             chosen["study_share"], validation), strict=True):
            out.append({"patient": p, "slices": len(sl), "slices_flagged": int(sl.sum()),
                        "flagged": bool(flag)})
    return sorted(out, key=lambda r: -r["slices_flagged"] / r["slices"])


def _study_grid(folds: list[list[str]], by_patient: dict, refs: list, full: Any,
                foreign: dict[str, list[dict]], validation: dict,
                chosen: dict | None) -> list[dict]:
    """At the chosen slice pair, for each study rate: held-out training patients flagged (each
    fold's study detector fitted and bounded without that fold: its bound from the other folds'
    out-of-fold distances and the validation patients'), by the study distance alone and with
    the slice rules, and the foreign studies caught by the reference fitted on all training
    patients."""
    if chosen is None:
        return []
    pair = (chosen["slice_rate"], chosen["study_share"])
    out = []
    for rate in STUDY_RATES:
        held = [r for fold, ref in zip(folds, refs, strict=True)
                for r in results(ref, [by_patient[p] for p in fold], *pair, validation, rate)]
        by_study = [any(x["statistic"] == "study_distance" for x in r.reasons) for r in held]
        by_geometry = [any(x["statistic"].endswith("_robust_z") for x in r.reasons)
                       for r in held]
        caught = {kind: float(np.mean([r.flagged for r in results(full, vals, *pair,
                                                                   validation, rate)]))
                  for kind, vals in foreign.items()}
        out.append({"study_rate": rate, "bound_all_training": round(float(full.study.bound), 3),
                    "heldout_patients_flagged": int(sum(r.flagged for r in held)),
                    "heldout_patients_flagged_by_study_distance": int(sum(by_study)),
                    "heldout_patients_flagged_by_geometry": int(sum(by_geometry)),
                    "heldout_patient_share": float(np.mean([r.flagged for r in held])),
                    "foreign_caught": caught, "foreign_min": min(caught.values())})
    return out


def _study_distances(folds: list[list[str]], by_patient: dict, refs: list, full: Any,
                     val: list[dict], foreign: dict[str, list[dict]]) -> dict:
    """Range of the study distance: held-out training patients (from their fold's detector, as
    a share of its bound at ood_study_rate 0.05), validation and foreign studies (the full
    reference, the same share)."""
    from brain_tumor.scoring import ood

    def share(ref: Any, values: list[dict]) -> list[float]:
        ref.set_study_rate(0.05)
        return [float(ref.study.distance(ood.study_summary(v["input"])[None])[0] / ref.study.bound)
                for v in values]

    held = [x for fold, ref in zip(folds, refs, strict=True)
            for x in share(ref, [by_patient[p] for p in fold])]
    groups = {"heldout_training": held, "validation": share(full, val),
              **{kind: share(full, vals) for kind, vals in foreign.items()}}
    return {k: {"min": round(min(v), 3), "median": round(float(np.median(v)), 3),
                "max": round(max(v), 3)} for k, v in groups.items()}


def geometry_run(args: argparse.Namespace) -> dict:
    """The geometry design (``--split``, see the module docstring): reads the split's train and
    validation patients only."""
    from brain_tumor.devtools.synth_dicom import tiff_slices
    from brain_tumor.devtools.synth_foreign import FOREIGN_KINDS, foreign_slices
    from brain_tumor.scoring import ood
    from brain_tumor.scoring.engines import study_input

    split = read_split(Path(args.split))
    train_ids, val_ids = split.get("train", []), split.get("val", [])
    if set(split.get("test", [])) & set(train_ids + val_ids):
        raise SystemExit("the split puts a patient in test and in train or validation")
    if len(train_ids) < ood.MIN_STUDIES or not val_ids:
        raise SystemExit(f"need at least {ood.MIN_STUDIES} training and one validation patient, "
                         f"received {len(train_ids)} and {len(val_ids)}")

    def summary(images: list[np.ndarray]) -> np.ndarray:
        return ood.study_summary(ood.input_statistics(study_input(images, args.size, args.norm)))

    slices = 0
    with tempfile.TemporaryDirectory(prefix="bench-ood-geometry-") as tmp:
        root = unpack_patients(Path(args.data), Path(tmp), train_ids + val_ids)
        train, val, foreign = [], [], {k: [] for k in FOREIGN_KINDS}
        for pid in train_ids:
            images = tiff_slices(root / pid)
            slices += len(images)
            train.append(summary(images))
        for n, pid in enumerate(val_ids, 1):
            images = tiff_slices(root / pid)
            slices += len(images)
            val.append(summary(images))
            for kind in FOREIGN_KINDS:
                foreign[kind].append(summary(foreign_slices(kind, images, seed=n)))
            logging.info("validation %d/%d %s and its foreign kinds", n, len(val_ids), pid)
    figures = geometry_figures(np.array(train), np.array(val),
                               {k: np.array(v) for k, v in foreign.items()}, args.folds,
                               args.seed)
    return {"machine": machine(), "split": str(args.split), "size": args.size,
            "input_norm": args.norm, "train_patients": len(train_ids),
            "validation_patients": len(val_ids), "slices": slices, "test_patients_read": 0,
            **figures}


def geometry_figures(train: np.ndarray, val: np.ndarray, foreign: dict[str, np.ndarray],
                     folds: int, seed: int) -> dict:
    """The study-level criteria on study summaries (S x D): nested cross-fitted false flags on
    the training and validation studies, foreign studies caught, for each of STUDY_RATES."""
    from brain_tumor.scoring import ood

    pooled = np.concatenate([train, val])
    is_train = np.arange(len(pooled)) < len(train)
    heldout = {"geometry": np.zeros(len(pooled)), "study": np.zeros(len(pooled))}
    oof_z = np.zeros((len(pooled), len(ood.GEOMETRY_STATS)))
    inner: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    for fold in folds_of(list(range(len(pooled))), folds, seed):
        rest = np.setdiff1d(np.arange(len(pooled)), fold)
        fit_train, fit_val = pooled[rest[is_train[rest]]], pooled[rest[~is_train[rest]]]
        geometry, g_held = ood.fit_geometry(fit_train, fit_val, 0.5, seed=seed)
        study, s_held = ood.fit_study(fit_train, fit_val, 0.5, seed=seed)
        oof_z[fold] = np.abs(geometry.z(pooled[fold]))
        heldout["geometry"][fold] = oof_z[fold].max(axis=1)
        heldout["study"][fold] = study.distance(pooled[fold])
        inner.append((np.array(fold), {"geometry": g_held, "study": s_held}))
    geometry, g_full = ood.fit_geometry(train, val, 0.5, seed=seed)
    study, s_full = ood.fit_study(train, val, 0.5, seed=seed)
    rates = []
    for rate in STUDY_RATES:
        share = {"geometry": ood.GEOMETRY_SHARE * rate,
                 "study": (1 - ood.GEOMETRY_SHARE) * rate}
        over = {name: np.zeros(len(pooled), bool) for name in share}
        for fold, held in inner:
            for name in share:
                bound = np.quantile(held[name], 1 - share[name])
                over[name][fold] = heldout[name][fold] > bound
        bounds = {"geometry": float(np.quantile(g_full, 1 - share["geometry"])),
                  "study": float(np.quantile(s_full, 1 - share["study"]))}
        caught = {}
        for kind, values in foreign.items():
            by_geometry = geometry.distance(values) > bounds["geometry"]
            by_study = study.distance(values) > bounds["study"]
            caught[kind] = {"geometry": float(by_geometry.mean()),
                            "study": float(by_study.mean()),
                            "either": float((by_geometry | by_study).mean())}
        rates.append({
            "study_rate": rate, "geometry_rate": share["geometry"],
            "bounds_all_training": {k: round(v, 3) for k, v in bounds.items()},
            "heldout_flagged": {"geometry": int(over["geometry"].sum()),
                                "study": int(over["study"].sum()),
                                "either": int((over["geometry"] | over["study"]).sum()),
                                "of": len(pooled)},
            "heldout_flag_rate": {"geometry": float(over["geometry"].mean()),
                                  "study": float(over["study"].mean()),
                                  "either": float((over["geometry"] | over["study"]).mean())},
            "foreign_caught": caught})
    z = {kind: np.abs(geometry.z(values)) for kind, values in foreign.items()}
    return {
        "folds": folds, "seed": seed, "geometry_share": ood.GEOMETRY_SHARE,
        "geometry_min_spread": ood.GEOMETRY_MIN_SPREAD, "rates": rates,
        "geometry_heldout_sorted": [round(float(v), 3) for v in np.sort(heldout["geometry"])],
        "geometry_statistics": {
            name: {"median": round(float(geometry.centre[k]), 4),
                   "spread": round(float(geometry.scale[k]), 4),
                   "heldout_max_abs_z": round(float(oof_z[:, k].max()), 2),
                   **{f"{kind}_min_abs_z": round(float(z[kind][:, k].min()), 2)
                      for kind in ("rotated", "cropped") if kind in z},
                   **{f"{kind}_median_abs_z": round(float(np.median(z[kind][:, k])), 2)
                      for kind in ("rotated", "cropped") if kind in z}}
            for k, name in enumerate(geometry.names)},
        "foreign_geometry_score_min": {kind: round(float(v.max(axis=1).min()), 2)
                                       for kind, v in z.items()},
    }


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="LGG archive or unpacked kaggle_3m folder")
    parser.add_argument("--model-version", help="the model version whose patients and engine "
                                                "are used (not with --split)")
    parser.add_argument("--split", help="geometry design on input statistics alone: a CSV of "
                                        "patient_id, split (its test patients are not read)")
    parser.add_argument("--size", type=int, default=128, help="model input size (--split)")
    parser.add_argument("--norm", default="none", help="intensity_norm of the model input "
                                                       "(--split)")
    parser.add_argument("--seed", type=int, default=1, help="folds (--split; train_seed)")
    parser.add_argument("--home", default="bench/results/quality-home",
                        help="server data of bench/quality.py run")
    parser.add_argument("--engine", default="auto", choices=("auto", "onnx", "openvino", "keras"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--values", help="keep (or read) the per-study values in this .npz")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.folds < 2:
        parser.error(f"--folds must be at least 2, received {args.folds}")
    if (args.model_version is None) == (args.split is None):
        parser.error("give either --model-version or --split")
    start_logging()
    clock = time.perf_counter()
    result = run(args) if args.split is None else geometry_run(args)
    result["wall_s"] = round(time.perf_counter() - clock, 1)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
