"""Evaluation plots (PNG) and the Markdown model card, from a ``metrics`` record.

matplotlib is imported inside ``write_plots`` with the Agg backend; nothing happens at import.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from brain_tumor.evaluation.catalog import METRICS
from brain_tumor.evaluation.evaluate import Predictions

logger = logging.getLogger(__name__)

CAPTION = "Research use only — not for diagnosis"
INTENDED_USE = "Research/triage support; not a diagnostic device."
PLOTS = ("roc", "pr", "confusion", "calibration", "slices")


def _save(fig: Any, path: Path, plt: Any, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.text(0.5, 0.005, CAPTION, ha="center", va="bottom", fontsize=8, color="dimgray")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, int):  # bool too
        return str(x)
    try:
        return f"{float(x):.3f}"
    except (TypeError, ValueError):
        return str(x)


def _interval(metrics: dict, name: str) -> str:
    ci = metrics.get("intervals", {}).get(name)
    if not ci or ci[0] is None or ci[1] is None:
        return "n/a"
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _roc_pr(test: Predictions, metrics: dict, out_dir: Path, plt: Any) -> list[Path]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    y, p = test.y_true, test.ranking_score()
    both = 0 < y.sum() < y.size
    fig, ax = plt.subplots(figsize=(5, 5))
    if both:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"ROC (AUC = {_fmt(metrics['slice'].get('roc_auc'))})")
    else:
        ax.text(0.5, 0.5, "ROC undefined: one class only", ha="center")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="chance")
    ax.set(xlabel="False positive rate", ylabel="True positive rate",
           title=f"ROC of the {metrics['slice'].get('ranked_by', 'probability')} (test slices)")
    ax.legend(loc="lower right")
    roc = _save(fig, out_dir / "roc.png", plt)

    fig, ax = plt.subplots(figsize=(5, 5))
    if y.sum() > 0:
        prec, rec, _ = precision_recall_curve(y, p)
        ax.plot(rec, prec, label=f"PR (AP = {_fmt(metrics['slice'].get('pr_auc'))})")
        ax.axhline(y.mean(), ls="--", color="gray", label="prevalence")
        ax.legend(loc="lower left")
    else:
        ax.text(0.5, 0.5, "PR undefined: no positives", ha="center")
    ax.set(xlabel="Recall", ylabel="Precision", title="Precision-recall (test slices)",
           xlim=(0, 1), ylim=(0, 1.05))
    return [roc, _save(fig, out_dir / "pr.png", plt)]


def _confusion(metrics: dict, out_dir: Path, plt: Any) -> Path:
    c = metrics["slice"]["confusion"]
    mat = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.imshow(mat, cmap="Blues")
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > mat.max() / 2 else "black", fontsize=14)
    ax.set_xticks([0, 1], ["no tumor", "tumor"])
    ax.set_yticks([0, 1], ["no tumor", "tumor"])
    ax.set(xlabel="Predicted", ylabel="True",
           title=f"Confusion at threshold {metrics['threshold']:.3f}")
    return _save(fig, out_dir / "confusion.png", plt)


def _calibration(metrics: dict, test: Predictions, out_dir: Path, plt: Any) -> Path:
    curve = metrics["calibration"]["curve"]
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5, 6.5), height_ratios=[3, 1], sharex=True)
    pts = [(mp, fp) for mp, fp in zip(curve["mean_predicted"], curve["fraction_positive"],
                                      strict=True) if mp is not None]
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect")
    if pts:
        ax.plot(*zip(*pts, strict=True), "o-", label="model")
    cal = metrics["calibration"]
    ax.set(ylabel="Observed tumor fraction", xlim=(0, 1), ylim=(0, 1),
           title=f"Reliability (Brier {_fmt(cal['brier'])}, ECE {_fmt(cal['ece'])})")
    ax.legend(loc="upper left")
    hx.hist(test.prob, bins=np.linspace(0, 1, len(curve["count"]) + 1), color="steelblue")
    hx.set(xlabel="Predicted probability", ylabel="Slices")
    return _save(fig, out_dir / "calibration.png", plt)


def _spread(ids: np.ndarray, idx: np.ndarray, score: np.ndarray) -> list[int]:
    """Indices by score, highest first, but each patient's best before anyone's second best."""
    by_score = sorted((int(i) for i in idx), key=lambda i: -score[i])
    taken: dict[str, int] = {}
    rank: dict[int, int] = {}
    for i in by_score:
        rank[i] = taken.get(ids[i], 0)
        taken[ids[i]] = rank[i] + 1
    return sorted(by_score, key=lambda i: (rank[i], -score[i]))


def _pick_slices(test: Predictions, threshold: float, max_grid: int) -> list[int]:
    y, p = test.y_true, test.prob
    area = np.asarray([np.count_nonzero(t) for t in test.true_masks])
    tumor = _spread(test.patient_ids, np.flatnonzero(y == 1), area)
    fps = _spread(test.patient_ids, np.flatnonzero((y == 0) & test.pred_label(threshold)), p)
    chosen: list[int] = []
    for k in range(max(len(tumor), len(fps))):  # interleave tumor slices and false positives
        chosen += [int(lst[k]) for lst in (tumor, fps) if k < len(lst)]
    seen = set(chosen)
    rest = [i for i in range(len(test)) if i not in seen]
    return (chosen + rest)[:max_grid]


def _slices(test: Predictions, threshold: float, images: np.ndarray | None, out_dir: Path,
            max_grid: int, plt: Any) -> Path:
    import cv2
    from matplotlib.lines import Line2D

    idx = _pick_slices(test, threshold, max(1, max_grid))
    cols = min(4, len(idx))
    rows = int(np.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.4 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), idx, strict=False):
        true = np.squeeze(np.asarray(test.true_masks[i]) != 0).astype(np.uint8)
        pred = np.squeeze(np.asarray(test.pred_masks[i]) != 0).astype(np.uint8)
        img = np.zeros(true.shape, np.uint8) if images is None else np.asarray(images[i])[..., 1]
        size = (img.shape[1], img.shape[0])
        if true.shape != img.shape:
            true = cv2.resize(true, size, interpolation=cv2.INTER_NEAREST)
            pred = cv2.resize(pred, size, interpolation=cv2.INTER_NEAREST)
        ax.imshow(img, cmap="gray", vmin=0, vmax=255 if img.dtype == np.uint8 else None)
        for mask, color in ((true, "lime"), (pred, "red")):
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=color, linewidths=1.2)
        where = f"slice {test.slice_index[i]}" if test.slice_index is not None else f"#{i}"
        ax.set_title(f"{test.patient_ids[i]} {where}\np={test.prob[i]:.2f} y={test.y_true[i]}",
                     fontsize=8)
    handles = [Line2D([], [], color="lime", label="true mask"),
               Line2D([], [], color="red", label="predicted mask")]
    fig.legend(handles=handles, loc="upper center", ncol=2, fontsize=8)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.05, top=1 - 0.8 / fig.get_figheight(),
                        wspace=0.05, hspace=0.35)
    return _save(fig, out_dir / "slices.png", plt, tight=False)


def write_plots(metrics: dict, test: Predictions, out_dir: Path, images: np.ndarray | None = None,
                max_grid: int = 12) -> list[Path]:
    """Write roc, pr, confusion, calibration and slices PNGs into out_dir; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if images is not None and len(images) != len(test):
        raise ValueError(f"{len(images)} images for {len(test)} slices")
    paths = _roc_pr(test, metrics, out_dir, plt)
    paths.append(_confusion(metrics, out_dir, plt))
    paths.append(_calibration(metrics, test, out_dir, plt))
    paths.append(_slices(test, float(metrics["threshold"]), images, out_dir, max_grid, plt))
    logger.info("wrote %d plots to %s", len(paths), out_dir)
    return paths


def postprocess_lines(config: dict) -> list[str]:
    """The model card's post-processing section: the rule, its parameters and how they were
    chosen (``model.json`` ``postprocess``)."""
    pp = config.get("postprocess")
    lines = ["## Post-processing", ""]
    if not pp:
        return lines + [
            "- Rule: slice_threshold. Each slice on its own: the classifier's probability at the "
            "decision threshold sets the label; the segmenter's mask is kept on tumor slices "
            "only."]
    params = ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}"
                       for k, v in (pp.get("params") or {}).items())
    lines += [
        f"- Rule: {pp.get('rule', 'n/a')} ({params}). A study's slice masks are stacked in "
        "slice order; the largest 3D connected component is kept with every other of at least "
        "keep_fraction of its size; slice masks under min_area_fraction of the slice are "
        "dropped unless the classifier calls the slice tumor; a slice is tumor exactly when "
        "its final mask is not empty.",
        f"- Tuned on {pp.get('tuned_on', 'n/a')} patients: {', '.join(pp.get('tuned', []))}, "
        f"maximizing per-patient Dice subject to slice sensitivity >= "
        f"{_fmt(pp.get('min_sensitivity'))} and false-positive slices per patient <= "
        f"{_fmt(pp.get('max_fp_per_patient'))} "
        f"({'met' if pp.get('constraints_met') else 'not met: best compromise kept'}).",
    ]
    objective = pp.get("objective") or {}
    if objective:
        lines.append("- Validation figures at these parameters: " + ", ".join(
            f"{k} {_fmt(v)}" for k, v in objective.items()) + ".")
    return lines


def _ranking_line(metrics: dict) -> list[str]:
    """How slices are ranked for the ROC and PR curves."""
    if (metrics.get("slice") or {}).get("ranked_by") != "tumor_score":
        return ["- ROC and PR curves rank slices by the classifier's probability."]
    return ["- ROC and PR curves rank slices by the tumor score: the larger of the classifier's "
            "probability and the peak of the segmenter's probability map (chosen on validation "
            "patients); the classifier alone is reported beside it."]


def _segmenter(config: dict) -> str:
    """The localization model as the card names it (model.json's seg_encoder, seg_context)."""
    if config.get("seg_encoder") == "backbone":
        return (f"U-Net decoder on the classifier's {config.get('backbone', 'n/a')} backbone "
                "(encoder started from the trained classifier)")
    context = int(config.get("seg_context") or 0)
    if context:
        return (f"U-Net segmenter, 2.5D: each slice with the FLAIR of {context} neighbouring "
                f"slice{'s' if context > 1 else ''} on each side")
    return "U-Net segmenter"


def model_card(metrics: dict, *, model_version: str, dataset_version: str, config: dict,
               split_counts: dict | None = None) -> str:
    """The model card as Markdown: details, intended use, data, method, metrics, limits, plots."""
    weights = config.get("weights") or "none (trained from scratch)"
    boot = metrics.get("bootstrap", {})
    lines = [
        f"# Model card: {model_version}", "", f"> {CAPTION}", "",
        "## Model details", "",
        f"- Model version: `{model_version}`",
        f"- Dataset version: `{dataset_version}`",
        f"- Classifier backbone: {config.get('backbone', 'n/a')}; "
        f"localization: {_segmenter(config)}",
        f"- Input image size: {config.get('image_size', 'n/a')}",
        f"- Backbone weights: {weights}",
        f"- Code version: {config.get('code_version', 'n/a')}",
        f"- Decision threshold: {_fmt(metrics.get('threshold'))} "
        f"(chosen on {metrics.get('threshold_source', 'validation')} patients)",
        "", "## Intended use", "", f"{INTENDED_USE} Flags MRI slices with a likely lower-grade "
        "glioma FLAIR abnormality and outlines it for review by a qualified reader.",
        "", "## Data", "", f"Dataset `{dataset_version}` (TCGA-LGG, `kaggle_3m` layout).", "",
        "| split | patients | slices | tumor slices |", "| --- | --- | --- | --- |",
    ]
    counts = split_counts or {"test": metrics.get("counts", {})}
    for split, c in counts.items():
        lines.append(f"| {split} | {_fmt(c.get('patients'))} | {_fmt(c.get('slices'))} | "
                     f"{_fmt(c.get('tumor_slices'))} |")
    lines += [
        "", "## Evaluation method", "",
        "- Patient-level split: no patient appears in more than one of train/val/test.",
        f"- Decision threshold chosen on validation patients only "
        f"({config.get('threshold_rule', 'youden')} rule); test labels never choose it.",
        "- Metrics are computed on test patients only.",
        f"- 95% bootstrap intervals resample patients ({boot.get('n_boot', 'n/a')} resamples).",
        "- Masks are evaluated at native resolution; Dice per patient stacks all of a patient's "
        "slices (Buda et al. 2019).",
        *_ranking_line(metrics),
        "", *postprocess_lines(config),
        "", "## Metrics (test patients)", "",
        "| metric | value | 95% CI |", "| --- | --- | --- |",
    ]
    for m in METRICS:
        ci = _interval(metrics, m.name) if m.interval else ""
        lines.append(f"| {m.label} | {m.text(m.value(metrics))} | {ci} |")
    lines += [
        "", "## Limits", "",
        "- Small dataset (about 110 patients in LGG); intervals are wide and rare failure modes "
        "are not measured.",
        "- One sequence set (pre-contrast, FLAIR, post-contrast) from a few TCIA institutions; "
        "other scanners, protocols and tumor types are untested.",
        "- Labels come from FLAIR abnormality masks; a slice is positive if any pixel is set.",
        "- Probabilities are not guaranteed to be calibrated; see the reliability diagram and "
        "do not read them as risks.",
    ]
    patient = metrics.get("patient") or {}
    if patient.get("patients") and patient.get("patients_with_tumor") == patient["patients"]:
        lines.append("- Every test patient has a tumor, so false alarms on tumor-free studies "
                     "are not measured; false-positive slices are counted within tumor "
                     "patients.")
    if str(config.get("weights")) != "imagenet":
        lines.append("- Trained without ImageNet weights (offline); accuracy may be lower than "
                     "with pretrained weights.")
    lines += ["", "## Plots", ""]
    lines += [f"- [{name}](plots/{name}.png)" for name in PLOTS]
    return "\n".join(lines) + "\n"
