"""Clinical formats on the real LGG data: every patient scored from its TIFF slices, from DICOM
series and from NIfTI volumes made of them, and what filling missing sequences from FLAIR costs.

  python bench/clinical_formats.py DATA --model-version M [--home DIR] [--json OUT]
      [--engine auto|onnx|openvino|keras] [--patients N] [--refit]

DATA is the LGG archive or an unpacked kaggle_3m folder; --home and --model-version name what
`bench/quality.py run --home DIR` left (its SeaweedFS data holds the dataset split and the model).

**Formats.** Each patient folder is converted once: to three 16-bit DICOM series
(``brain_tumor.devtools.synth_dicom``: stored values rescaled to 4x the 8-bit value) and to three
NIfTI volumes (``brain_tumor.devtools.synth_nifti``), both with square 0.9 mm pixels so the
reader keeps the TIFF grid. Each is read by the pipeline's own readers
(``read_dicom_files`` / ``read_nifti_files`` + ``assemble_study``: series rules, intensity rule)
and scored with the model version's engine and post-processing, exactly as ``batch_score`` does.

The kaggle_3m TIFFs are already the intensity rule's output of the scanner's series, so a
converted series goes through the rule a second time. Two comparisons keep the two effects apart:
``dicom`` and ``nifti`` against ``tiff_mapped`` (the rule applied to the same values, scored as
slices: what the readers must reproduce exactly), and ``tiff_mapped`` against ``tiff`` (what a
second pass of the rule does to data it already mapped: not a property of scanner series, but
what a converted archive would go through). Reported per path: per-patient Dice against the true
masks (mean, 95% bootstrap interval over patients, median), slice ROC-AUC, how many studies the
model version's out-of-distribution check flags (as scoring would; with ``--refit`` the check's
reference is fitted with the current code on the model's training and validation patients, as
``bench/ood.py --refit`` does), and the differences
from its baseline (slices whose label differs, largest and mean probability difference, patients
whose Dice moved by more than 0.01); patients a path rejects are listed with the reason.

**Reduced sequences.** On the model's **validation** patients, the TIFF slices are scored with
the pre-contrast T1, the post-contrast T1 or both replaced by FLAIR (what the readers do for a
study missing them, ``reduced_sequences``): per-patient Dice, ROC-AUC, sensitivity, specificity
and false-positive slices per patient, beside the full study's.

Nothing here chooses anything; the figures describe the model version as it is.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from quality import PROFILES, _server, _settings, emit, machine, start_logging
from scoring import _unpack

#: square pixels keep the reader on the TIFF grid (no in-plane resampling)
PIXEL_SPACING = (0.9, 0.9)
#: reduced-sequence variants: name -> channels (kaggle_3m order) replaced by FLAIR (channel 1)
REDUCED = {"full": (), "t1_pre_filled": (0,), "t1_post_filled": (2,), "both_filled": (0, 2)}
DICE_MOVED = 0.01


def true_masks(folder: Path) -> list[np.ndarray]:
    """The boolean masks of a kaggle_3m patient folder, by slice number."""
    from brain_tumor.ingest.imaging import decode_mask

    files = sorted(folder.glob("*_mask.tif"), key=lambda p: int(p.stem.split("_")[-2]))
    return [decode_mask(path.read_bytes()) > 0 for path in files]


def ci_mean(values: list[float], seed: int = 0) -> list[float]:
    """95% bootstrap interval of a per-patient mean."""
    from brain_tumor.evaluation.metrics import bootstrap_ci

    arr = np.asarray(values, float)
    low, high = bootstrap_ci(list(range(len(arr))), lambda idx: float(arr[idx].mean()),
                             seed=seed)
    return [round(low, 4), round(high, 4)] if low is not None else [None, None]


def auc(truth: np.ndarray, prob: np.ndarray) -> float | None:
    """Slice ROC-AUC, None when one class is missing."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, prob)) if 0 < truth.sum() < truth.size else None


class Scorer:
    """The model version's engine, post-processing and out-of-distribution check, as
    ``batch_score`` runs them."""

    def __init__(self, store, settings, model_version: str) -> None:
        from brain_tumor.ml.ood_reference import load_reference
        from brain_tumor.scoring.engines import load_engine
        from brain_tumor.scoring.postprocess import post_processor

        self.engine = load_engine(store, settings, model_version)
        self.post = post_processor(self.engine.record, settings)
        self.reference = load_reference(store, settings, self.engine.record)

    def __call__(self, study):
        """(probabilities, labels, masks, flagged out of distribution or None) of a study."""
        from brain_tumor.scoring.study import ood_check

        raw = self.engine.predict(study.images)
        pred = self.post(raw, study, self.engine.threshold)
        checked, _ = ood_check(self.reference, study, raw, int(self.engine.record["image_size"]))
        flagged = None if checked is None else bool(checked.flagged)
        return np.asarray(pred.prob, float), np.asarray(pred.label, int), pred.masks, flagged


def format_studies(folder: Path, work: Path, pid: str, limits, rules) -> dict:
    """The patient's study as the TIFF path, the DICOM path and the NIfTI path read it; a
    format whose reader rejects the study maps to the ``StudyRejected``."""
    from brain_tumor.devtools.synth_dicom import DicomSpec, tiff_slices, write_study
    from brain_tumor.devtools.synth_nifti import NiftiSpec, write_nifti_study
    from brain_tumor.scoring.clinical.channels import assemble_study
    from brain_tumor.scoring.clinical.dicom import read_dicom_files
    from brain_tumor.scoring.clinical.intensity import map_volume
    from brain_tumor.scoring.clinical.nifti import read_nifti_files
    from brain_tumor.scoring.contracts import Study, StudyRejected

    images = tiff_slices(folder)
    index, source = list(range(1, len(images) + 1)), [pid] * len(images)
    studies: dict = {"tiff": Study(pid, images, index, source)}
    try:  # the rule applied to the TIFF values as the converted series hold them (4 x v)
        mapped = [map_volume(4.0 * np.stack([s[..., c] for s in images]))[0] for c in range(3)]
        studies["tiff_mapped"] = Study(pid, list(np.stack(mapped, axis=-1)), index, source)
    except ValueError as exc:
        studies["tiff_mapped"] = StudyRejected("intensity_range", str(exc))
    spec = DicomSpec(uid_seed=pid, pixel_spacing=PIXEL_SPACING)
    readers = {
        "dicom": lambda: read_dicom_files(
            sorted(write_study(folder, work / "dicom", spec).rglob("*.dcm")), limits),
        "nifti": lambda: read_nifti_files(
            write_nifti_study(folder, work / "nifti", NiftiSpec(pixel_spacing=PIXEL_SPACING)),
            limits),
    }
    for fmt, read in readers.items():
        try:
            studies[fmt] = assemble_study(pid, read(), rules, fmt)
        except StudyRejected as exc:
            logging.warning("%s as %s: rejected (%s): %s", pid, fmt, exc.reason, exc.detail)
            studies[fmt] = exc
    return studies


#: format -> the path it is compared with: the readers against the rule's output of the same
#: values (what they must reproduce), the rule's output against the kaggle_3m TIFFs themselves
BASELINE = {"dicom": "tiff_mapped", "nifti": "tiff_mapped", "tiff_mapped": "tiff"}
FORMATS = ("tiff", "tiff_mapped", "dicom", "nifti")


def format_figures(rows: list[dict], test_ids: set[str]) -> dict:
    """Per format: Dice, AUC and differences from its baseline (``BASELINE``), over all and
    test patients (those every format could read), and the patients each path rejected."""
    out: dict = {"rejected": {fmt: [{"patient": r["patient"], "reason": r[fmt]["rejected"]}
                                    for r in rows if "rejected" in r[fmt]]
                              for fmt in FORMATS[1:]}}
    read = [r for r in rows if all("rejected" not in r[f] for f in FORMATS)]
    for fmt in FORMATS:
        for scope, keep in (("all", lambda r: True), ("test", lambda r: r["patient"] in test_ids)):
            sel = [r for r in read if keep(r)]
            if not sel:
                continue
            dice = [r[fmt]["dice"] for r in sel]
            truth = np.concatenate([r["truth"] for r in sel])
            prob = np.concatenate([r[fmt]["prob"] for r in sel])
            fig = {"patients": len(sel), "dice_mean": round(float(np.mean(dice)), 4),
                   "dice_ci95": ci_mean(dice), "dice_median": round(float(np.median(dice)), 4),
                   "slice_auc": auc(truth, prob),
                   "flagged_out_of_distribution": sum(bool(r[fmt]["ood"]) for r in sel)}
            base = BASELINE.get(fmt)
            if base is not None:
                delta = np.abs(prob - np.concatenate([r[base]["prob"] for r in sel]))
                labels = np.concatenate([r[fmt]["label"] for r in sel])
                base_labels = np.concatenate([r[base]["label"] for r in sel])
                moved = [r["patient"] for r in sel
                         if abs(r[fmt]["dice"] - r[base]["dice"]) > DICE_MOVED]
                fig |= {"compared_with": base, "slices": int(delta.size),
                        "labels_differing": int(np.sum(labels != base_labels)),
                        "prob_diff_max": round(float(delta.max()), 4),
                        "prob_diff_mean": round(float(delta.mean()), 5),
                        "dice_diff_mean": round(float(np.mean(
                            [r[fmt]["dice"] - r[base]["dice"] for r in sel])), 4),
                        "patients_dice_moved": moved}
            out[f"{fmt}_{scope}"] = fig
    return out


def reduced_figures(scorer: Scorer, root: Path, val_ids: list[str]) -> dict:
    """The validation patients scored with channels filled from FLAIR, per variant."""
    from brain_tumor.devtools.synth_dicom import tiff_slices
    from brain_tumor.evaluation.metrics import (
        classification_metrics,
        patient_detection,
        per_patient_dice,
    )
    from brain_tumor.scoring.contracts import Study

    per: dict[str, dict[str, list]] = {v: {"pid": [], "truth": [], "prob": [], "label": [],
                                           "true_m": [], "pred_m": []} for v in REDUCED}
    for n, pid in enumerate(val_ids, 1):
        images, masks = tiff_slices(root / pid), true_masks(root / pid)
        for variant, channels in REDUCED.items():
            filled = [img.copy() for img in images]
            for img in filled:
                for c in channels:
                    img[..., c] = img[..., 1]
            study = Study(pid, filled, list(range(1, len(filled) + 1)), [pid] * len(filled))
            prob, label, pred_masks, _ = scorer(study)
            acc = per[variant]
            acc["pid"] += [pid] * len(filled)
            acc["truth"] += [bool(m.any()) for m in masks]
            acc["prob"] += list(prob)
            acc["label"] += list(label)
            acc["true_m"] += masks
            acc["pred_m"] += list(pred_masks)
        logging.info("reduced sequences: %d/%d %s", n, len(val_ids), pid)
    out = {}
    for variant, acc in per.items():
        dice = list(per_patient_dice(acc["pid"], acc["true_m"], acc["pred_m"]).values())
        truth, prob = np.asarray(acc["truth"]), np.asarray(acc["prob"])
        cls = classification_metrics(truth, prob, scorer.engine.threshold, label=acc["label"])
        found = patient_detection(acc["pid"], truth, acc["label"])
        out[variant] = {"channels_filled": [("t1_pre", "flair", "t1_post")[c]
                                            for c in REDUCED[variant]],
                        "patients": len(val_ids),
                        "dice_mean": round(float(np.mean(dice)), 4), "dice_ci95": ci_mean(dice),
                        "slice_auc": cls["roc_auc"], "sensitivity": cls["sensitivity"],
                        "specificity": cls["specificity"],
                        "false_positive_slices_per_patient":
                            round(found["false_positive_slices_per_patient"], 3),
                        "detection_rate": found["detection_rate"]}
    return out


def run(args: argparse.Namespace) -> dict:
    """The benchmark (see the module docstring)."""
    from brain_tumor import steps
    from brain_tumor.evaluation.metrics import per_patient_dice
    from brain_tumor.scoring.clinical.channels import SeriesRules
    from brain_tumor.scoring.readers import StudyLimits
    from brain_tumor.store.datasets import DatasetStore
    from brain_tumor.store.modelstore import ModelStore

    home = Path(args.home).resolve()
    server = _server(home)
    server.start()
    try:
        settings = _settings(server, home, dict(PROFILES["cpu"])).model_copy(
            update={"engine": args.engine})
        store = steps.open_store(settings)
        record = ModelStore(store, settings).record(args.model_version)
        split = DatasetStore(store, settings).split(record["dataset_version"])
        by_split = {s: sorted(split.loc[split["split"] == s, "patient_id"])
                    for s in ("train", "val", "test")}
        scorer = Scorer(store, settings, args.model_version)
        limits, rules = StudyLimits.from_settings(settings), SeriesRules.from_settings(settings)
        with tempfile.TemporaryDirectory(prefix="bench-formats-") as tmp:
            root = _unpack(Path(args.data), Path(tmp) / "data")
            if args.refit:
                from ood import refit_from_folder

                from brain_tumor.ml.normalize import record_method

                scorer.reference = refit_from_folder(
                    scorer.engine, root, by_split["train"], by_split["val"], settings,
                    int(record["image_size"]), record_method(record))
            patients = sorted(p.name for p in root.iterdir() if p.is_dir())[:args.patients]
            rows, clock = [], time.perf_counter()
            for n, pid in enumerate(patients, 1):
                work = Path(tmp) / "conv" / pid
                studies = format_studies(root / pid, work, pid, limits, rules)
                masks = true_masks(root / pid)
                row: dict = {"patient": pid, "truth": np.asarray([m.any() for m in masks])}
                for fmt, study in studies.items():
                    if isinstance(study, Exception):
                        row[fmt] = {"rejected": f"{study.reason}: {study.detail}"}
                        continue
                    if len(study.images) != len(masks):
                        raise SystemExit(f"{pid} {fmt}: {len(study.images)} slices read, "
                                         f"{len(masks)} masks")
                    prob, label, pred_masks, flagged = scorer(study)
                    row[fmt] = {"prob": prob, "label": label, "ood": flagged,
                                "dice": per_patient_dice([pid] * len(masks), masks,
                                                         pred_masks)[pid]}
                rows.append(row)
                logging.info("formats: %d/%d %s: Dice %s", n, len(patients), pid, ", ".join(
                    f"{f} {row[f].get('dice', 'rejected')}" for f in FORMATS))
            formats_s = time.perf_counter() - clock
            val_ids = [p for p in by_split["val"] if p in patients]
            reduced = reduced_figures(scorer, root, val_ids) if val_ids else None
    finally:
        server.stop()
    return {
        "machine": machine(), "model_version": args.model_version,
        "engine": type(scorer.engine).__name__, "patients": len(rows),
        "ood_reference": "refitted by this run" if args.refit else "the model version's ood.npz",
        "pixel_spacing_mm": list(PIXEL_SPACING),
        "formats": format_figures(rows, set(by_split["test"])),
        "formats_s": round(formats_s, 1),
        "reduced_sequences_validation": reduced,
        "per_patient": [{"patient": r["patient"],
                         **{f"dice_{f}": (round(r[f]["dice"], 4) if "dice" in r[f] else None)
                            for f in FORMATS}}
                        for r in rows],
    }


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="LGG archive or unpacked kaggle_3m folder")
    parser.add_argument("--model-version", required=True)
    parser.add_argument("--home", default="bench/results/quality-home",
                        help="server data of bench/quality.py run")
    parser.add_argument("--engine", default="auto", choices=("auto", "onnx", "openvino", "keras"))
    parser.add_argument("--patients", type=int, default=None,
                        help="only the first N patient folders (a quick check)")
    parser.add_argument("--refit", action="store_true",
                        help="fit the out-of-distribution reference with the current code on "
                             "the model's training and validation patients (as bench/ood.py "
                             "--refit), instead of the model version's stored one")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    start_logging()
    emit(run(args), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
