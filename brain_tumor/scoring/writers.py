"""Output writers: a scored study's objects under ``scores/<model>/<study>/`` (fourth seam).

``SlicesTableWriter`` writes ``slices.parquet`` (one row per slice); ``PictureWriter`` writes
``masks/<N>.png`` and ``overlays/<N>.png`` for each tumor slice and ``overview.png``. The summary
and the done marker are not writers' business: ``brain_tumor.scoring.study`` commits them last.

Pixel columns are on the slices as scored (what the pictures show); the physical columns
(``brain_tumor.scoring.units``: mm², mm) are on the study's source grid, and None where its
spacing is unknown. ``SlicesTableWriter`` also adds the study's ``tumor_volume_ml`` and
``tumor_extent_mm`` to ``pred.summary``, which is merged into ``summary.json``.

A study flagged out of distribution (``pred.summary["out_of_distribution"]``) has the flag on
its overview picture; one whose results are withheld (``pred.summary["withheld"]``) gets no masks
or overlays, and its overview shows the slices without any result.

``ClinicalMaskWriter`` writes the final tumor mask on the grid the FLAIR was acquired on
(``brain_tumor.scoring.clinical.masks_out``): ``seg.dcm`` for a DICOM study, ``mask.nii.gz`` for
a NIfTI study, and says in ``pred.summary`` which it wrote (see its docstring for when none).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from brain_tumor.scoring.clinical.masks_out import (
    acquired_masks,
    build_segmentation,
    dicom_bytes,
    nifti_mask_bytes,
)
from brain_tumor.scoring.contracts import OutputWriter, Study, StudyPrediction
from brain_tumor.scoring.overlay import OOD_BANNER, contact_sheet, encode_png, overlay
from brain_tumor.scoring.units import physical_units
from brain_tumor.settings import Settings
from brain_tumor.store.schemas import validate_table
from brain_tumor.store.scores import ScoreStore

MAX_OVERVIEW_TILES = 24  # tumor slices on the overview, evenly spaced when there are more
FALLBACK_TILES = 4  # slices on the overview of a study without tumor
DICOM_SEG = "seg.dcm"
NIFTI_MASK = "mask.nii.gz"


def slices_table(study: Study, pred: StudyPrediction,
                 units: dict[str, list[float | None]] | None = None) -> pd.DataFrame:
    """The scored_slices table of one study (units: ``physical_units``' columns, computed
    here when not given)."""
    if units is None:
        units = physical_units(study, pred)[1]
    boxes = [g["bbox"] or (None,) * 4 for g in pred.geometry]
    cents = [g["centroid"] or (np.nan, np.nan) for g in pred.geometry]
    df = pd.DataFrame({
        "study_id": study.study_id, "slice_index": np.asarray(study.slice_index, np.int64),
        "source_key": study.source,
        "probability": np.asarray(pred.prob, np.float64),
        "tumor_score": (np.full(len(pred.prob), np.nan) if pred.score is None
                        else np.asarray(pred.score, np.float64)),
        "label": np.asarray(pred.label, np.int64),
        "tumor_pixels": np.asarray([g["area"] for g in pred.geometry], np.int64),
        **{f"bbox_{c}": pd.array([b[i] for b in boxes], dtype="Int64")
           for i, c in enumerate(("y0", "x0", "y1", "x1"))},
        "centroid_y": np.asarray([c[0] for c in cents], np.float64),
        "centroid_x": np.asarray([c[1] for c in cents], np.float64),
        **{name: np.asarray([np.nan if v is None else v for v in values], np.float64)
           for name, values in units.items()},
        "ood_score": (np.full(len(pred.prob), np.nan) if pred.ood_score is None
                      else np.asarray(pred.ood_score, np.float64)),
    })
    return validate_table("scored_slices", df)


def spread(items: list[int], count: int) -> list[int]:
    """At most count items, evenly spaced, first and last included."""
    picks = np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


class SlicesTableWriter:
    """``slices.parquet``: probability, label, area, box and centroid of every slice, in
    pixels and (spacing known) millimetres; the study's physical units into ``pred.summary``."""

    def write(self, scores: ScoreStore, model_version: str, study: Study,
              pred: StudyPrediction) -> list[str]:
        """Write the table; returns its name."""
        summary, columns = physical_units(study, pred)
        scores.put_table(model_version, study.study_id, "slices.parquet",
                         slices_table(study, pred, columns))
        pred.summary.update(summary)
        return ["slices.parquet"]


class PictureWriter:
    """PNG masks and overlays of tumor slices, and one overview picture per study."""

    def __init__(self, io_workers: int = 8) -> None:
        self.io_workers = io_workers

    def write(self, scores: ScoreStore, model_version: str, study: Study,
              pred: StudyPrediction) -> list[str]:
        """Write every picture; returns their names."""
        sid, idx = study.study_id, study.slice_index
        banner = OOD_BANNER if pred.summary.get("out_of_distribution") else None
        if pred.summary.get("withheld"):
            shown = spread(list(range(len(study.images))), FALLBACK_TILES)
            tiles = [overlay(study.images[i], None, None, float(pred.prob[i]),
                             int(pred.label[i]), caption="result withheld") for i in shown]
            scores.put_output(model_version, sid, "overview.png",
                              encode_png(contact_sheet(tiles, banner=banner)), "image/png")
            return ["overview.png"]
        tumor = [i for i in range(len(study.images)) if pred.label[i]]

        def picture(i: int) -> np.ndarray:
            return overlay(study.images[i], pred.masks[i], pred.geometry[i]["bbox"],
                           float(pred.prob[i]), int(pred.label[i]))

        def write_tumor_slice(i: int) -> np.ndarray:
            mask_png = encode_png(np.where(pred.masks[i], 255, 0).astype(np.uint8))
            scores.put_output(model_version, sid, f"masks/{idx[i]}.png", mask_png, "image/png")
            pic = picture(i)
            scores.put_output(model_version, sid, f"overlays/{idx[i]}.png", encode_png(pic),
                              "image/png")
            return pic

        with ThreadPoolExecutor(max_workers=self.io_workers) as pool:
            pictures = dict(zip(tumor, pool.map(write_tumor_slice, tumor), strict=True))
        shown = (spread(tumor, MAX_OVERVIEW_TILES)
                 or spread(list(range(len(study.images))), FALLBACK_TILES))
        sheet = contact_sheet([pictures[i] if i in pictures else picture(i) for i in shown],
                              banner=banner)
        scores.put_output(model_version, sid, "overview.png", encode_png(sheet), "image/png")
        return [*(f"masks/{idx[i]}.png" for i in tumor), *(f"overlays/{idx[i]}.png" for i in tumor),
                "overview.png"]


class ClinicalMaskWriter:
    """The final tumor mask on the acquired FLAIR grid: a DICOM SEG (``seg.dcm``) of a DICOM
    study, a NIfTI mask (``mask.nii.gz``) of a NIfTI study.

    summary.json gets ``dicom_seg`` and ``nifti_mask`` (the name written, or null) and
    ``mask_output_note`` (null, or why a study of that format got none). Policy:

    * a study whose results are withheld (``pred.summary["withheld"]``) gets neither;
    * a DICOM study without any tumor slice gets no SEG (viewers handle empty segmentations
      badly); its summary says so;
    * a NIfTI study without tumor gets an all-zero mask;
    * a TIFF study has no acquired grid and gets neither.
    """

    def write(self, scores: ScoreStore, model_version: str, study: Study,
              pred: StudyPrediction) -> list[str]:
        """Write the study's SEG or NIfTI mask (when the policy calls for one); returns names."""
        fmt = study.meta.get("format")
        fields: dict[str, str | None] = {"dicom_seg": None, "nifti_mask": None,
                                         "mask_output_note": None}
        written: list[str] = []
        if fmt not in ("dicom", "nifti"):
            fields["mask_output_note"] = f"a {fmt} study has no acquired grid to write a mask on"
        elif pred.summary.get("withheld"):
            fields["mask_output_note"] = "results withheld: no mask is written"
        elif fmt == "nifti":
            mask = acquired_masks(study, pred)
            data = nifti_mask_bytes(mask, np.asarray(study.meta["acquired_affine"]))
            scores.put_output(model_version, study.study_id, NIFTI_MASK, data,
                              "application/gzip")
            fields["nifti_mask"], written = NIFTI_MASK, [NIFTI_MASK]
        elif not any(int(v) for v in pred.label):
            fields["mask_output_note"] = "no tumor slice: no segmentation is written"
        else:
            seg = build_segmentation(study.meta["flair_headers"], acquired_masks(study, pred),
                                     model_version)
            if seg is None:
                fields["mask_output_note"] = "no tumor voxel on the acquired grid: no " \
                                             "segmentation is written"
            else:
                scores.put_output(model_version, study.study_id, DICOM_SEG, dicom_bytes(seg),
                                  "application/dicom")
                fields["dicom_seg"], written = DICOM_SEG, [DICOM_SEG]
        pred.summary.update(fields)
        return written


def output_writers(settings: Settings) -> list[OutputWriter]:
    """Every output a scored study gets: the slices table, the pictures, the clinical masks."""
    writers: list[OutputWriter] = [
        SlicesTableWriter(),
        PictureWriter(settings.io_workers),
        ClinicalMaskWriter(),
    ]
    if settings.scoring_source == "dicomweb":  # last: it sends what the writers above wrote
        from brain_tumor.scoring.pacs_out import PacsSegSender

        writers.append(PacsSegSender(settings))
    return writers
