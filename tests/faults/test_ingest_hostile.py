"""Exports that lie in their TIFF headers or hold nothing but masks: a reason each, the rest of
the run goes on. Real synthetic exports on the test's S3 server (moto)."""

from __future__ import annotations

import pandas as pd
from test_clinical_hostile import tiff_header_only

from brain_tumor import steps
from brain_tumor.devtools.synth import SynthSpec, make_export
from brain_tumor.ingest.exports import upload_export
from brain_tumor.ingest.run import ingest_export
from brain_tumor.store.datasets import DatasetStore

SPEC = SynthSpec(patients=4, slices=4, size=32)


def test_tiff_headers_claiming_zero_or_four_billion_pixels_a_side_are_quarantined(
        tmp_path, settings, store):
    report = make_export(tmp_path / "e1", SPEC)
    pid = report.patients[0]
    folder = report.root / pid
    (folder / f"{pid}_1.tif").write_bytes(tiff_header_only(0, 32))
    (folder / f"{pid}_2_mask.tif").write_bytes(tiff_header_only(2**32 - 1, 2**32 - 1))
    upload_export(store, settings, report.root, export_id="e1")

    res = ingest_export(store, settings, "e1")

    rows = {r["path"]: r for r in res.quarantine.to_dict("records")}
    assert {p: r["reason"] for p, r in rows.items()} == {
        f"{pid}/{pid}_1.tif": "unreadable", f"{pid}/{pid}_2_mask.tif": "too_large"}
    assert "4294967295x4294967295 pixels" in rows[f"{pid}/{pid}_2_mask.tif"]["detail"]
    assert "not decoded" in rows[f"{pid}/{pid}_2_mask.tif"]["detail"]
    assert res.counts["accepted"] == 14
    manifest = DatasetStore(store, settings).manifest(res.dataset_version)
    assert sorted(manifest[manifest["patient_id"] == pid]["slice_index"]) == [3, 4]


def test_an_export_of_masks_only_is_rejected_and_the_next_one_is_ingested(tmp_path, settings,
                                                                          store):
    masks = make_export(tmp_path / "masks", SPEC).root
    for image in masks.rglob("*.tif"):
        if not image.name.endswith("_mask.tif"):
            image.unlink()
    upload_export(store, settings, masks, export_id="a-masks")
    upload_export(store, settings, make_export(tmp_path / "good", SPEC).root,
                  export_id="b-good")

    result = steps.ingest(settings, ["a-masks", "b-good"])

    assert [r["export_id"] for r in result["exports"]] == ["b-good"]
    assert result["exports"][0]["accepted"] == 16
    (rejected,) = result["rejected"]
    assert rejected["export_id"] == "a-masks" and rejected["recorded"]
    assert "no slice accepted" in rejected["reason"] and "missing_image" in rejected["reason"]
    entry = DatasetStore(store, settings).entry("a-masks")
    assert entry["status"] == "rejected" and pd.isna(entry["dataset_version"])
