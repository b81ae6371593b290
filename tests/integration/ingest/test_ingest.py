"""Ingest on a real S3 server (moto on loopback) with synthetic exports in the kaggle_3m layout."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brain_tumor.devtools.synth import BAD_KINDS, SynthSpec, make_archive, make_export
from brain_tumor.ingest.exports import ExportError, list_exports, seal_export, upload_export
from brain_tumor.ingest.imaging import decode_image, decode_mask, encode_tiff
from brain_tumor.ingest.run import IngestError, ingest_export
from brain_tumor.store.datasets import DatasetStore
from brain_tumor.store.storage import ObjectStore, StorageError

EXPECTED_REASON = {
    "corrupt": "unreadable", "truncated": "unreadable", "missing_mask": "missing_mask",
    "orphan_mask": "missing_image", "shape_mismatch": "shape_mismatch",
    "nonbinary_mask": "mask_values", "uint16": "not_uint8", "channels": "channels",
    "bad_name": "bad_name", "wrong_size": "wrong_size",
}


def _export(tmp_path: Path, name: str, **spec) -> tuple[Path, object]:
    root = tmp_path / name
    report = make_export(root, SynthSpec(**{"patients": 4, "slices": 4, "size": 32, **spec}))
    return root, report


def test_every_bad_kind_is_quarantined_and_the_rest_goes_on(tmp_path, settings, store):
    assert set(EXPECTED_REASON) == set(BAD_KINDS)
    root, report = _export(tmp_path, "e1", patients=10, slices=6, bad=BAD_KINDS)
    upload_export(store, settings.model_copy(update={"max_quarantine_fraction": 0.5}), root)
    res = ingest_export(store, settings.model_copy(update={"max_quarantine_fraction": 0.5}), "e1")
    q = res.quarantine
    assert res.counts["accepted"] == report.slices == 60
    for kind in BAD_KINDS:
        paths = {p for p, k in report.bad_files.items() if k == kind}
        rows = q[q["path"].isin(paths)]
        assert len(rows) >= 1, kind
        assert set(rows["reason"]) == {EXPECTED_REASON[kind]}, (kind, rows)
        assert rows["detail"].str.len().min() > 10
    kept = q.dropna(subset=["blob_key"])
    for r in kept.itertuples():  # the rejected bytes are kept, content-addressed
        assert hashlib.sha256(store.get(r.blob_key)).hexdigest() == r.sha256


def test_manifest_relabels_from_masks_and_points_at_stored_bytes(tmp_path, settings, store):
    root, report = _export(tmp_path, "e1", tumor_free_patients=1)
    upload_export(store, settings, root)
    res = ingest_export(store, settings, "e1")
    ds = DatasetStore(store, settings)
    m = ds.manifest(res.dataset_version)
    assert len(m) == report.slices and m["patient_id"].nunique() == 4
    assert int(m["label"].sum()) == report.tumor_slices
    row = m[m["label"] == 1].iloc[0]
    local = root / row.patient_id / f"{row.patient_id}_{row.slice_index}_mask.tif"
    mask = decode_mask(local.read_bytes())
    assert row.tumor_pixels == int((mask > 0).sum())
    ys, xs = np.nonzero(mask)
    assert (row.bbox_y0, row.bbox_x0, row.bbox_y1, row.bbox_x1) == (
        ys.min(), xs.min(), ys.max(), xs.max())
    assert row.mask_sha256 == hashlib.sha256(local.read_bytes()).hexdigest()
    image = decode_image(store.get(row.image_key))
    assert image.shape == (32, 32, 3) and row.institution == row.patient_id.split("_")[1]
    assert pd.isna(m[m["label"] == 0].iloc[0].bbox_y0)


def test_same_export_twice_same_version_and_content_derived_ids(tmp_path, make_settings):
    root, _ = _export(tmp_path, "e1")
    versions = []
    for _ in range(2):  # two independent buckets: the id comes from content alone
        settings = make_settings()
        store = ObjectStore.from_settings(settings)
        store.ensure_bucket()
        upload_export(store, settings, root)
        first = ingest_export(store, settings, "e1")
        keys = sorted(o.key for o in store.list(""))
        again = ingest_export(store, settings, "e1")
        assert again.already_ingested and again.dataset_version == first.dataset_version
        assert sorted(o.key for o in store.list("")) == keys  # nothing new written
        versions.append(first.dataset_version)
    assert versions[0] == versions[1] and versions[0].startswith("ds-")


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz", ".tar.xz"])
def test_archives_ingest_like_folders(tmp_path, make_settings, suffix):
    root, _ = _export(tmp_path, "src")
    folder = make_settings()
    fstore = ObjectStore.from_settings(folder)
    fstore.ensure_bucket()
    upload_export(fstore, folder, root, export_id="e1")
    expected = ingest_export(fstore, folder, "e1").dataset_version
    archived = make_settings()
    astore = ObjectStore.from_settings(archived)
    astore.ensure_bucket()
    archive = make_archive(root, tmp_path / f"e1{suffix}")
    assert upload_export(astore, archived, archive) == "e1"
    assert list_exports(astore, archived) == ["e1"]
    assert ingest_export(astore, archived, "e1").dataset_version == expected


def test_later_export_adds_patients_and_supersedes_changed_slices(tmp_path, settings, store):
    root1, r1 = _export(tmp_path, "e1")
    upload_export(store, settings, root1)
    v1 = ingest_export(store, settings, "e1").dataset_version
    ds = DatasetStore(store, settings)
    m1 = ds.manifest(v1)
    # export 2: two new patients, plus a corrected (now empty) mask for one tumor slice of e1
    root2, _ = _export(tmp_path, "e2", patients=2, first_patient=4, seed=5)
    fixed = m1[m1["label"] == 1].iloc[0]
    folder = root2 / fixed.patient_id
    folder.mkdir()
    src = root1 / fixed.patient_id / f"{fixed.patient_id}_{fixed.slice_index}.tif"
    (folder / src.name).write_bytes(src.read_bytes())
    empty_mask = encode_tiff(np.zeros((32, 32), np.uint8))
    (folder / src.name.replace(".tif", "_mask.tif")).write_bytes(empty_mask)
    upload_export(store, settings, root2)
    res = ingest_export(store, settings, "e2")
    v2 = res.dataset_version
    assert v2 != v1 and ds.head().version == v2 and ds.record(v2)["parent"] == v1
    m2 = ds.manifest(v2)
    assert m2["patient_id"].nunique() == 6 and len(m2) == len(m1) + 8
    row = m2[(m2.patient_id == fixed.patient_id) & (m2.slice_index == fixed.slice_index)].iloc[0]
    assert row.label == 0 and row.export_id == "e2"
    ch = ds.changes(v2)
    assert len(ch) == 1 and (ch.iloc[0].old_label, ch.iloc[0].new_label) == (1, 0)
    assert res.counts["changed"] == 1 and res.counts["added"] == 8
    assert ds.manifest(v1).equals(m1)  # the old version is untouched
    assert sorted(ds.ledger()) == ["e1", "e2"]
    assert ds.record(v2)["exports"] == ["e1", "e2"]


def test_identical_slices_appear_once(tmp_path, settings, store):
    root, r = _export(tmp_path, "e1")
    upload_export(store, settings, root)
    v1 = ingest_export(store, settings, "e1").dataset_version
    upload_export(store, settings, root, export_id="e1-again")
    res = ingest_export(store, settings, "e1-again")
    assert res.dataset_version == v1 and res.counts["added"] == 0
    assert len(DatasetStore(store, settings).manifest(v1)) == r.slices


def test_empty_and_missing_exports_are_errors_and_write_nothing(tmp_path, settings, store):
    with pytest.raises(ExportError, match="not found"):
        ingest_export(store, settings, "nope")
    store.put("exports/only-notes/README.md", b"nothing here")
    seal_export(store, settings, "only-notes")
    with pytest.raises(ExportError, match="holds no slice files"):
        ingest_export(store, settings, "only-notes")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="is empty"):
        upload_export(store, settings, tmp_path / "empty")
    assert DatasetStore(store, settings).head().version is None
    assert not list(store.list("datasets/")) and not list(store.list("ledger/"))


def test_too_many_rejects_fail_loudly_and_change_nothing(tmp_path, settings, store):
    good, _ = _export(tmp_path, "good")
    upload_export(store, settings, good)
    v1 = ingest_export(store, settings, "good").dataset_version
    before = sorted(o.key for o in store.list(""))
    bad, _ = _export(tmp_path, "bad", patients=2, slices=1, first_patient=10,
                     bad=("corrupt", "uint16", "channels"))
    upload_export(store, settings, bad)
    with pytest.raises(IngestError, match=r"rejected .* > max_quarantine_fraction 20%"):
        ingest_export(store, settings, "bad")
    ds = DatasetStore(store, settings)
    assert ds.head().version == v1 and "bad" not in ds.ledger()
    after = {o.key for o in store.list("")} - set(before)
    assert all(k.startswith(("exports/bad/", "slices/")) for k in after)  # only the upload + blobs


def test_expected_slice_size_rejects_other_sizes(tmp_path, settings, store):
    root, r = _export(tmp_path, "e1")
    upload_export(store, settings, root)
    strict = settings.model_copy(update={"expected_slice_size": 64, "max_quarantine_fraction": 1.0})
    with pytest.raises(IngestError, match=r"16 of 16 items rejected \(no slice accepted\); "
                                          r"reasons \[\('wrong_size', 16\)\].*expected 64x64"):
        ingest_export(store, strict, "e1")
    assert DatasetStore(store, settings).head().version is None


def test_upload_refuses_to_replace_an_export(tmp_path, settings, store):
    root, _ = _export(tmp_path, "e1")
    upload_export(store, settings, root)
    before = {o.key: o.etag for o in store.list("exports/")}
    assert upload_export(store, settings, root) == "e1"  # the same folder again: nothing to do
    assert {o.key: o.etag for o in store.list("exports/")} == before
    next(root.rglob("*_mask.tif")).write_bytes(b"changed")
    with pytest.raises(ExportError, match="exists already"):
        upload_export(store, settings, root)
    assert {o.key: o.etag for o in store.list("exports/")} == before


def test_unreachable_s3_fails_clearly(make_settings):
    settings = make_settings(s3_endpoint_url="http://127.0.0.1:9", s3_max_attempts=1)
    with pytest.raises(StorageError, match="cannot reach S3"):
        ingest_export(ObjectStore.from_settings(settings), settings, "e1")
