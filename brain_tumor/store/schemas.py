"""Schemas of every object the pipeline writes, and the one validation every writer and reader uses.

Tables are Parquet files (``validate_table``); records are JSON objects (``validate_record``).
Every JSON record carries ``schema_version`` (``SCHEMA_VERSION``): ``validate_record`` adds it
to a record that lacks it, so writers store it and records written before it existed read as
version 1. ``docs/schemas.md`` is generated from this module (``brain-tumor schemas``), and a
test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

#: layout version of the JSON records this code writes and reads
SCHEMA_VERSION = 1
#: the field every JSON record carries its layout version in
VERSION_FIELD = "schema_version"


class SchemaError(ValueError):
    """An object does not match its schema; the message says which field and what was found."""


@dataclass(frozen=True)
class Col:
    """One column (table) or field (record)."""

    name: str
    kind: str  # str | int | float | bool | datetime | dict | list
    doc: str
    nullable: bool = False


_VERSION_COL = Col(VERSION_FIELD, "int", f"record layout version ({SCHEMA_VERSION}); added on "
                  "write, read as 1 when absent")


@dataclass(frozen=True)
class Schema:
    """A table or record schema and where its objects live."""

    name: str
    location: str
    doc: str
    cols: tuple[Col, ...]
    table: bool = True

    @property
    def fields(self) -> tuple[Col, ...]:
        """The columns of a table; a record's fields, ``schema_version`` first."""
        return self.cols if self.table else (_VERSION_COL, *self.cols)


_BBOX = (
    Col("bbox_y0", "int", "tumor bounding box, first row (inclusive)", nullable=True),
    Col("bbox_x0", "int", "first column (inclusive)", nullable=True),
    Col("bbox_y1", "int", "last row (inclusive)", nullable=True),
    Col("bbox_x1", "int", "last column (inclusive)", nullable=True),
)

SCHEMAS: dict[str, Schema] = {s.name: s for s in (
    Schema("manifest", "datasets/<version>/manifest.parquet",
           "One row per (patient, slice) of a dataset version.", (
               Col("patient_id", "str", "e.g. TCGA_CS_4941_19960909"),
               Col("institution", "str", "second token of the patient id (CS, DU, ...)"),
               Col("acquisition_date", "str", "YYYY-MM-DD, from the folder name"),
               Col("slice_index", "int", "N of <PATIENT>_<N>.tif"),
               Col("image_key", "str", "content-addressed key of the slice TIFF"),
               Col("mask_key", "str", "content-addressed key of the mask TIFF"),
               Col("image_sha256", "str", "sha256 of the slice file's bytes"),
               Col("mask_sha256", "str", "sha256 of the mask file's bytes"),
               Col("height", "int", "pixels"),
               Col("width", "int", "pixels"),
               Col("label", "int", "1 if and only if the mask has any non-zero pixel"),
               Col("tumor_pixels", "int", "non-zero mask pixels"),
               *_BBOX,
               Col("export_id", "str", "export this row came from"),
               Col("source_path", "str", "path of the slice inside that export"),
           )),
    Schema("quarantine", "datasets/<version>/quarantine.parquet",
           "Every rejected file of the exports in this version, with its reason.", (
               Col("export_id", "str", "export the file came from"),
               Col("path", "str", "path inside the export"),
               Col("patient_id", "str", "when the name could be parsed", nullable=True),
               Col("slice_index", "int", "when the name could be parsed", nullable=True),
               Col("reason", "str", "unreadable | not_tiff | too_small | not_uint8 | channels | "
                                    "mask_values | shape_mismatch | wrong_size | missing_mask | "
                                    "missing_image | duplicate_slice | bad_name | unsafe_path | "
                                    "not_a_file | too_large"),
               Col("detail", "str", "human-readable explanation"),
               Col("sha256", "str", "sha256 of the rejected file", nullable=True),
               Col("blob_key", "str", "key of the kept copy of the rejected bytes", nullable=True),
           )),
    Schema("changes", "datasets/<version>/changes.parquet",
           "Slices of the parent version superseded by a later export (e.g. a corrected mask).", (
               Col("patient_id", "str", ""),
               Col("slice_index", "int", ""),
               Col("old_image_sha256", "str", ""),
               Col("new_image_sha256", "str", ""),
               Col("old_mask_sha256", "str", ""),
               Col("new_mask_sha256", "str", ""),
               Col("old_label", "int", ""),
               Col("new_label", "int", ""),
               Col("old_export_id", "str", ""),
               Col("new_export_id", "str", ""),
           )),
    Schema("split", "datasets/<version>/split.parquet", "Patient -> split, one row per patient.", (
        Col("patient_id", "str", ""),
        Col("split", "str", "train | val | test"),
        Col("institution", "str", ""),
        Col("slices", "int", "slices of the patient"),
        Col("tumor_slices", "int", "slices with label 1"),
    )),
    Schema("scored_slices", "scores/<model_version>/<study_id>/slices.parquet",
           "Per-slice results of scoring one study.", (
               Col("study_id", "str", ""),
               Col("slice_index", "int", ""),
               Col("source_key", "str", "key of the scored slice"),
               Col("probability", "float", "classifier tumor probability"),
               Col("tumor_score", "float", "larger of the classifier probability and the "
                   "segmenter map's peak: ranks slices, not calibrated (null: not computed)",
                   nullable=True),
               Col("label", "int", "final label: 1 when the post-processed mask is not empty "
                   "(per-slice rule: probability >= the model's threshold)"),
               Col("tumor_pixels", "int", "pixels of the predicted mask, at the slice's size"),
               *_BBOX,
               Col("centroid_y", "float", "", nullable=True),
               Col("centroid_x", "float", "", nullable=True),
               Col("tumor_area_mm2", "float", "mask area on the source grid in mm² (null: no "
                   "tumor, or spacing unknown)", nullable=True),
               Col("bbox_height_mm", "float", "box height (rows) in mm", nullable=True),
               Col("bbox_width_mm", "float", "box width (columns) in mm", nullable=True),
               Col("ood_score", "float", "out-of-distribution score: largest distance / bound "
                   "(> 1: over a bound); null when the model version has no reference",
                   nullable=True),
           )),
    Schema("dataset", "datasets/<version>/dataset.json",
           "Written last: a version exists only once this object does.", (
               Col("version", "str", "ds-<12 hex>, derived from the content"),
               Col("parent", "str", "previous head version", nullable=True),
               Col("exports", "list", "every export id included so far"),
               Col("created_at", "str", "ISO 8601 UTC"),
               Col("counts", "dict", "patients, slices, tumor_slices, quarantined, changed"),
               Col("code_version", "str", "package version + hash of the training-relevant source"),
           ), table=False),
    Schema("folder_manifest", "exports/<export_id>/_manifest.json, "
           "incoming/<study_id>/_manifest.json",
           "Written last into an export folder or incoming study by `upload`, `submit` or "
           "`seal`: the folder is complete once it exists, and taken only while its files match "
           "it.", (
               Col("kind", "str", "export | study"),
               Col("id", "str", "the export id or study id"),
               Col("files", "list", "[{path, size, sha256, etag}] of every other file in the "
                                    "folder, by path"),
               Col("file_count", "int", "entries in files"),
               Col("total_bytes", "int", "sum of their sizes"),
               Col("sealed_by", "str", "upload | submit | seal"),
               Col("sealed_at", "str", "ISO 8601 UTC"),
           ), table=False),
    Schema("dataset_head", "datasets/HEAD.json", "Pointer to the newest dataset version "
           "(moved by compare-and-swap).", (
               Col("version", "str", ""),
               Col("updated_at", "str", "ISO 8601 UTC"),
           ), table=False),
    Schema("ledger_entry", "ledger/exports/<export_id>.json",
           "One per export the pipeline decided on: the version that took it in, or why not. "
           "Written once; only a rejected entry is ever replaced or removed (`brain-tumor "
           "exports reject|retry`).", (
               Col("export_id", "str", ""),
               Col("status", "str", "ingested: the version lists it | duplicate: it added "
                                    "nothing, the version it duplicates does not list it | "
                                    "rejected: not taken in (read as ingested when absent)"),
               Col("reason", "str", "why it was rejected, or which export(s) it duplicates",
                   nullable=True),
               Col("fingerprint", "str", "sha256 over the export's file names, sizes and ETags"),
               Col("dataset_version", "str", "the version that took it in, or the one it "
                                             "duplicates; null when rejected", nullable=True),
               Col("ingested_at", "str", "ISO 8601 UTC, when it was ingested or rejected"),
               Col("counts", "dict", "files, slices, accepted, quarantined, added, changed "
                                     "(empty when rejected before reading)"),
           ), table=False),
    Schema("model", "models/<model_version>/model.json",
           "Written last: a model version exists once this object does. Versions with "
           "whole-study post-processing add `postprocess` {rule, params, tuned_on, objective}; "
           "newer ones `seg_encoder` (unet | backbone: a U-Net decoder on the classifier's "
           "backbone) and `seg_context` (neighbouring slices a side the segmenter reads, 2.5D); "
           "absent: unet, 0.", (
               Col("model_version", "str", "m-<12 hex>, derived from dataset version + training "
                                           "settings + code version"),
               Col("dataset_version", "str", "the data it was trained on"),
               Col("image_size", "int", "model input size"),
               Col("threshold", "float", "classifier decision threshold, chosen on validation "
                                         "patients"),
               Col("threshold_rule", "str", "youden | f1"),
               Col("backbone", "str", "resnet50 | tiny"),
               Col("keras_backend", "str", "tensorflow | jax | torch"),
               Col("best_epochs", "dict", "best epoch (1-based) per model, from the checkpoints"),
               Col("created_at", "str", "ISO 8601 UTC"),
               Col("code_version", "str", "package version + hash of the training-relevant source"),
           ), table=False),
    Schema("metrics", "models/<model_version>/metrics.json",
           "Evaluation of a model on the test patients of a dataset version.", (
               Col("model_version", "str", ""),
               Col("dataset_version", "str", ""),
               Col("threshold", "float", "decision threshold, chosen on validation patients"),
               Col("slice", "dict", "roc_auc, pr_auc (ranked by ranked_by: tumor_score or "
                                    "probability), roc_auc_classifier, accuracy, sensitivity, "
                                    "specificity, precision, f1, confusion"),
               Col("calibration", "dict", "brier, ece, curve (reliability diagram bins)"),
               Col("localization", "dict", "per-patient Dice mean/median, tumor-slice Dice/IoU"),
               Col("patient", "dict", "detection_rate, false_positive_slices_per_patient"),
               Col("intervals", "dict", "95% bootstrap intervals over patients"),
           ), table=False),
    Schema("gate_result", "models/<model_version>/gate/<dataset_version>.json",
           "Every check of a candidate with its value, bound and outcome.", (
               Col("model_version", "str", ""),
               Col("champion_version", "str", "", nullable=True),
               Col("passed", "bool", ""),
               Col("checks", "list", "[{name, kind, metric, value, bound, op, passed, note}]"),
           ), table=False),
    Schema("registry_event", "registry/events/<seq:08d>.json",
           "One immutable object per decision; seq N is written once (If-None-Match).", (
               Col("seq", "int", "1, 2, ...: the event's place in the log (its key)"),
               Col("action", "str", "promoted | rejected | rolled_back"),
               Col("model_version", "str", ""),
               Col("previous_champion", "str", "", nullable=True),
               Col("dataset_version", "str", "", nullable=True),
               Col("reason", "str", ""),
               Col("metrics", "dict", "headline metrics", nullable=True),
               Col("run_id", "str", "Airflow run id or 'cli'", nullable=True),
               Col("at", "str", "ISO 8601 UTC"),
           ), table=False),
    Schema("champion", "registry/champion.json", "The champion pointer (compare-and-swap).", (
        Col("model_version", "str", ""),
        Col("event", "str", "key of the event that set it"),
        Col("updated_at", "str", "ISO 8601 UTC"),
    ), table=False),
    Schema("study_summary", "scores/<model_version>/<study_id>/summary.json",
           "Per-study result of scoring; whole-study post-processing adds postprocess_rule, "
           "components_found, components_dropped, small_masks_dropped. Studies scored with the "
           "physical units add tumor_volume_ml (float) and tumor_extent_mm ([along slices, rows, "
           "columns]), null where the spacing is unknown (TIFF), and format (tiff | nifti | "
           "dicom); DICOM and NIfTI studies add reduced_sequences (bool), filled_channels "
           "(channels filled from the FLAIR), spacing_mm ([slices, rows, columns]) and "
           "voxel_volume_ml. The out-of-distribution check adds out_of_distribution (bool), "
           "ood_score (median slice score; > 1: over a bound), ood_slices (slices over a bound), "
           "ood_reasons ([{statistic, value, bound, slices_over}]), ood_note and withheld (masks "
           "and overlays not written); the ood fields are null for model versions without a "
           "reference. The clinical mask writer adds dicom_seg ('seg.dcm': the tumor mask as a "
           "DICOM Segmentation of the FLAIR series, or null), nifti_mask ('mask.nii.gz': uint8 "
           "0/1 on the FLAIR file's grid and affine, or null) and mask_output_note (null, or why "
           "none was written). Policy: a TIFF study and a study whose results are withheld get "
           "neither; a DICOM study without a tumor slice gets no SEG; a NIfTI study without "
           "tumor gets an all-zero mask. A study whose SEG was stored in the PACS "
           "(scoring_source dicomweb) adds pacs_sent (when, ISO 8601 UTC).", (
               Col("study_id", "str", ""),
               Col("model_version", "str", ""),
               Col("dataset_version", "str", ""),
               Col("tumor_present", "bool", ""),
               Col("tumor_slices", "int", ""),
               Col("slices", "int", ""),
               Col("tumor_volume_voxels", "int", ""),
               Col("max_probability", "float", ""),
               Col("scored_at", "str", "ISO 8601 UTC"),
           ), table=False),
    Schema("study_quarantine", "scores/<model_version>/quarantine/<study_id>.json",
           "Why a study could not be scored by this model version (nothing else is written).", (
               Col("study_id", "str", ""),
               Col("model_version", "str", ""),
               Col("reason", "str", "empty | duplicate | bad_name | incomplete | too_many_slices | "
                                    "too_large | wrong_size | unreadable | not_tiff | too_small | "
                                    "not_uint8 | channels | unsupported_format | not_3d | "
                                    "no_flair | no_frame_of_reference | frame_of_reference | "
                                    "intensity_range | not_dicom | "
                                    "truncated | missing_handler | mixed_patients | "
                                    "slice_positions | unsafe_path | not_a_file"),
               Col("detail", "str", "human-readable explanation"),
               Col("files", "list", "keys of the offending objects (may be empty)"),
               Col("at", "str", "ISO 8601 UTC"),
           ), table=False),
    Schema("batch_summary", "scores/batches/<run_id>.json", "One scoring batch (DAG run). "
           "Runs with the out-of-distribution check add studies_out_of_distribution (int), "
           "out_of_distribution ([{study_id, ood_score, reasons}]) and drift ({psi_bound, "
           "ood_score: {psi, ks, n}, probability: {psi, ks, n}, exceeded}; null without a "
           "reference or a scored study).", (
        Col("run_id", "str", "Airflow run id (characters other than letters, digits, '._-' "
                             "become '_' in the key)"),
        Col("trigger", "str", "what started the run: scheduled, asset_triggered, manual",
            nullable=True),
        Col("model_version", "str", "the champion the run scored with"),
        Col("studies_planned", "int", "studies the run took on"),
        Col("studies_scored", "int", "studies scored by this run"),
        Col("studies_skipped", "int", "studies already scored by this model version"),
        Col("studies_quarantined", "int", "studies rejected by this run (see `quarantined`)"),
        Col("studies_failed", "int", "planned studies whose task failed (retried next run)"),
        Col("studies_deferred", "int", "due studies left for later runs (per-run cap)"),
        Col("studies_outside_window", "int", "studies scored by an earlier champion that "
                                             "arrived before the re-scoring window"),
        Col("tumors_found", "int", "scored studies with at least one tumor slice"),
        Col("slices_scored", "int", ""),
        Col("mean_max_probability", "float", "mean over scored studies", nullable=True),
        Col("seconds", "dict", "read_s, model_s, write_s summed over scored studies"),
        Col("quarantined", "list", "study_id, reason, detail of each rejected study"),
        Col("failed", "list", "study ids whose task failed"),
        Col("started_at", "str", "ISO 8601 UTC"),
        Col("finished_at", "str", "ISO 8601 UTC"),
    ), table=False),
)}

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (float, int), "bool": (bool,),
    "dict": (dict,), "list": (list,), "datetime": (str,),
}


def _get(name: str, table: bool) -> Schema:
    schema = SCHEMAS.get(name)
    if schema is None or schema.table != table:
        kind = "table" if table else "record"
        raise SchemaError(f"no {kind} schema named {name!r}")
    return schema


def _column_ok(series: pd.Series, kind: str) -> bool:
    non_null = series.dropna()
    if non_null.empty:
        return True
    if kind == "str":
        return all(isinstance(v, str) for v in non_null)
    if kind == "int":
        return pd.api.types.is_integer_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if kind == "float":
        return pd.api.types.is_float_dtype(series) or pd.api.types.is_integer_dtype(series)
    if kind == "bool":
        return pd.api.types.is_bool_dtype(series)
    return True


def validate_table(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Check a table against its schema; return it with the schema's columns in order."""
    schema = _get(name, table=True)
    missing = [c.name for c in schema.cols if c.name not in df.columns]
    if missing:
        raise SchemaError(f"{name}: missing columns {missing}; received {list(df.columns)}")
    for col in schema.cols:
        series = df[col.name]
        if not col.nullable and series.isna().any():
            raise SchemaError(f"{name}.{col.name}: {int(series.isna().sum())} null value(s)")
        if not _column_ok(series, col.kind):
            raise SchemaError(f"{name}.{col.name}: expected {col.kind}, received {series.dtype}")
    return df[[c.name for c in schema.cols]]


def validate_record(name: str, record: Any) -> dict[str, Any]:
    """Check a JSON record against its schema (extra fields are allowed); return it.

    A record without ``schema_version`` gets the current one (records written before the field
    existed are version 1); one written by another layout version is refused.
    """
    schema = _get(name, table=False)
    if not isinstance(record, dict):
        raise SchemaError(f"{name}: expected a JSON object, received {type(record).__name__}")
    record.setdefault(VERSION_FIELD, SCHEMA_VERSION)
    version = record[VERSION_FIELD]
    if type(version) is not int or version != SCHEMA_VERSION:
        raise SchemaError(f"{name}.{VERSION_FIELD}: this code reads version {SCHEMA_VERSION}, "
                          f"received {version!r:.60}")
    for col in schema.cols:
        if col.name not in record:
            raise SchemaError(f"{name}: missing field {col.name!r}; received {sorted(record)}")
        value = record[col.name]
        if value is None:
            if not col.nullable:
                raise SchemaError(f"{name}.{col.name}: null is not allowed")
            continue
        types = _PY_TYPES[col.kind]
        if not isinstance(value, types) or (col.kind != "bool" and isinstance(value, bool)):
            raise SchemaError(f"{name}.{col.name}: expected {col.kind}, received "
                              f"{type(value).__name__} {value!r:.60}")
    return record


def _cell(text: str) -> str:
    """text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def describe_markdown() -> str:
    """The schemas as Markdown (the body of docs/schemas.md)."""
    lines = ["# Object schemas", "",
             "Generated by `brain-tumor schemas` from `brain_tumor/store/schemas.py`; every "
             "writer and",
             "reader validates through `validate_table` / `validate_record`. Keys are relative to",
             "the bucket and the optional `s3_root`. Every JSON record carries `schema_version`",
             f"(now {SCHEMA_VERSION}), added by `validate_record` on write; a record without it",
             "reads as version 1.", ""]
    for schema in SCHEMAS.values():
        kind = "Parquet table" if schema.table else "JSON record"
        lines += [f"## `{schema.name}` — {kind}", "", f"`{schema.location}` — {schema.doc}", "",
                  "| field | type | null | meaning |", "| --- | --- | --- | --- |"]
        lines += [f"| `{c.name}` | {c.kind} | {'yes' if c.nullable else 'no'} | {_cell(c.doc)} |"
                  for c in schema.fields]
        lines.append("")
    return "\n".join(lines)
