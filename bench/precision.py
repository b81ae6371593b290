"""Reduced precision against float32 on a model version's VALIDATION patients (never test).

  python bench/precision.py --model-version M [--precision bf16] [--home DIR] [--json OUT]

Runs the version's ONNX export on OpenVINO at f32 and at --precision, each validation patient's
slices in slice order as one study through the version's own post-processing (the rule scoring
runs), and compares: slices whose final label differs, the largest probability and map
differences, each patient's Dice against the true masks at both precisions and its difference,
and the headline metrics (``brain_tumor.evaluation.evaluate``) at both. ``within_tolerance`` is
whether every headline metric moved by at most the gate's tolerance (``gate_tolerance``): the
condition for scoring at reduced precision (``engine_precision``). The server and model cache
are the quality benchmark's (--home, BENCH_S3_PORT).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from quality import PROFILES, _server, _settings, emit, start_logging


def predict_patients(engine: Any, images: np.ndarray, patient_ids: np.ndarray,
                     slice_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities and maps of every slice, each patient predicted as one study; seconds."""
    prob = np.zeros(len(images))
    maps = np.zeros((len(images), *images.shape[1:3]), np.float32)
    order = [np.flatnonzero(patient_ids == pid) for pid in dict.fromkeys(patient_ids.tolist())]
    order = [rows[np.argsort(slice_index[rows], kind="stable")] for rows in order]
    start = time.perf_counter()
    for rows, raw in zip(order, engine.predict_studies([list(images[r]) for r in order]),
                         strict=True):
        prob[rows], maps[rows] = raw.prob, raw.maps
    return prob, maps, time.perf_counter() - start


def compare(store: Any, settings: Any, version: str, precision: str) -> dict[str, Any]:
    """The f32 / ``precision`` comparison on the version's validation patients."""
    from brain_tumor.evaluation.catalog import headline
    from brain_tumor.evaluation.evaluate import Predictions, evaluate
    from brain_tumor.evaluation.metrics import per_patient_dice
    from brain_tumor.ml.export import ensure_exported, fetch_exported
    from brain_tumor.ml.inputs import fetch_native_masks, load_arrays
    from brain_tumor.scoring.engines import OnnxEngine, engine_batch_size
    from brain_tumor.scoring.postprocess import post_processor, postprocess_groups, tumor_score
    from brain_tumor.store.modelstore import ModelStore

    record = ModelStore(store, settings).record(version)
    ensure_exported(store, settings, version)
    folder = fetch_exported(store, settings, version)
    val = load_arrays(store, settings, record["dataset_version"],
                      int(record["image_size"])).subset("val")
    if len(val) == 0:
        raise ValueError(f"model version {version}'s dataset has no validation slices")
    true_masks = fetch_native_masks(store, list(val.mask_keys), workers=settings.io_workers)
    rule = post_processor(record, settings)
    threshold = float(record["threshold"])
    out: dict[str, Any] = {}
    for p in dict.fromkeys(("f32", precision)):
        engine = OnnxEngine(version, record, folder, engine_batch_size(settings),
                            settings.engine_threads, "openvino", p)
        prob, maps, seconds = predict_patients(engine, val.images, val.patient_ids,
                                               val.slice_index)
        label, masks, _ = postprocess_groups(rule, prob, maps, [m.shape[:2] for m in true_masks],
                                             val.patient_ids, val.slice_index, threshold)
        preds = Predictions(patient_ids=val.patient_ids, y_true=val.labels, prob=prob,
                            true_masks=true_masks, pred_masks=masks,
                            slice_index=val.slice_index, label=label,
                            score=tumor_score(prob, maps))
        metrics = evaluate(preds, threshold, model_version=version,
                           dataset_version=record["dataset_version"], n_boot=50)
        out[p] = {"prob": prob, "maps": maps, "label": np.asarray(label), "masks": masks,
                  "seconds": seconds, "dice": per_patient_dice(val.patient_ids, true_masks, masks),
                  "headline": headline(metrics)}
    ref, low = out["f32"], out[precision]
    dice_diff = {pid: round(low["dice"][pid] - d, 5) for pid, d in ref["dice"].items()}
    moved = {k: (None if ref["headline"][k] is None or low["headline"][k] is None
                 else round(float(low["headline"][k]) - float(ref["headline"][k]), 5))
             for k in ref["headline"]}
    return {
        "model_version": version, "precision": precision, "split": "val",
        "patients": len(ref["dice"]), "slices": len(val),
        "labels_differing": int(np.sum(ref["label"] != low["label"])),
        "max_probability_diff": round(float(np.max(np.abs(ref["prob"] - low["prob"]))), 6),
        "max_map_diff": round(float(np.max(np.abs(ref["maps"] - low["maps"]))), 6),
        "mask_pixels_differing": int(sum(np.sum(a != b)
                                         for a, b in zip(ref["masks"], low["masks"], strict=True))),
        "dice_diff_per_patient": dice_diff,
        "max_abs_dice_diff": max((abs(v) for v in dice_diff.values()), default=0.0),
        "headline_f32": ref["headline"], f"headline_{precision}": low["headline"],
        "headline_diff": moved, "gate_tolerance": settings.gate_tolerance,
        "within_tolerance": bool(moved) and all(
            v is not None and abs(v) <= settings.gate_tolerance for v in moved.values()),
        "model_seconds": {p: round(o["seconds"], 2) for p, o in out.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-version", required=True)
    parser.add_argument("--precision", choices=("bf16",), default="bf16")
    parser.add_argument("--home", default="bench/results/quality-home",
                        help="server data and model cache (shared with bench/quality.py)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    start_logging()
    from brain_tumor import steps

    home = Path(args.home).resolve()
    server = _server(home)
    server.start()
    try:
        settings = _settings(server, home, dict(PROFILES["cpu"]))
        result = compare(steps.open_store(settings), settings, args.model_version,
                         args.precision)
    finally:
        server.stop()
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
