"""Exports built to break ingest: a bad export among good ones, names that are not UTF-8, an
export that adds nothing, one slice in two folders, archive members that are not plain files,
a killed ingest's work folder, 1 x 1 slices and PNGs named .tif.

Each test builds the attack from real synthetic exports on a real S3 server (moto) and checks
what is recorded: the ledger, the quarantine table, the dataset record, the CLI's output.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from brain_tumor import steps
from brain_tumor.cli import main
from brain_tumor.devtools.synth import SynthSpec, make_archive, make_export
from brain_tumor.ingest.exports import upload_export
from brain_tumor.ingest.imaging import MIN_SLICE_SIZE, SliceError, decode_image, encode_tiff
from brain_tumor.ingest.run import (
    STALE_WORKDIR_SECONDS,
    WORKDIR_PREFIX,
    IngestError,
    ingest_export,
)
from brain_tumor.settings import settings_to_env
from brain_tumor.store.datasets import DatasetStore

SPEC = SynthSpec(patients=4, slices=4, size=32)


@pytest.fixture
def cli_env(settings, monkeypatch):
    """The test's settings in the environment, for the CLI."""
    for key, value in settings_to_env(settings).items():
        monkeypatch.setenv(key, value)
    return settings


def _export(root: Path, **spec: object) -> object:
    return make_export(root, SynthSpec(**{**SPEC.__dict__, **spec}))


def _tar(dest: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return dest


def _tar_of(root: Path, dest: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A .tar.gz of an export folder (members under kaggle_3m/) plus extra members."""
    members = [(tarfile.TarInfo(f"kaggle_3m/{p.relative_to(root).as_posix()}"), p.read_bytes())
               for p in sorted(root.rglob("*")) if p.is_file()]
    return _tar(dest, members + extra)


def _bad_exports(tmp_path: Path) -> dict[str, Path]:
    """One export per kind of bad export, as a local folder or archive to upload."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("no slices here")
    unreadable = tmp_path / "unreadable.tar.gz"
    unreadable.write_bytes(b"\x1f\x8b this is not gzip" + bytes(300))
    corrupt = _export(tmp_path / "corrupt", patients=1, slices=1,
                      bad=("corrupt", "uint16", "channels")).root
    for good in corrupt.rglob("*.tif"):  # keep only the bad files
        if good.name.endswith(("_1.tif", "_1_mask.tif")):
            good.unlink()
    return {"empty-archive": _tar(tmp_path / "empty-archive.tar.gz", []),
            "notes-only": notes, "unreadable": unreadable, "all-rejected": corrupt,
            "too-many-rejects": _export(tmp_path / "many", patients=1, slices=2, bad=(
                "corrupt", "truncated", "uint16")).root}


# --- 1. one bad export among good ones ---
@pytest.mark.parametrize("kind", ["empty-archive", "notes-only", "unreadable", "all-rejected",
                                  "too-many-rejects"])
def test_a_bad_export_is_rejected_and_the_next_one_is_ingested(tmp_path, settings, store, kind):
    upload_export(store, settings, _bad_exports(tmp_path)[kind], export_id="a-bad")
    upload_export(store, settings, _export(tmp_path / "good").root, export_id="b-good")
    assert steps.new_exports(settings) == ["a-bad", "b-good"]

    result = steps.ingest(settings, steps.new_exports(settings))

    assert [r["export_id"] for r in result["exports"]] == ["b-good"]
    assert result["exports"][0]["accepted"] == 16
    assert [(r["export_id"], r["recorded"]) for r in result["rejected"]] == [("a-bad", True)]
    datasets = DatasetStore(store, settings)
    entry = datasets.entry("a-bad")
    assert entry["status"] == "rejected" and entry["dataset_version"] is None
    assert entry["reason"] == result["rejected"][0]["reason"] and len(entry["reason"]) > 20
    assert set(datasets.ledger()) == {"b-good"} and set(datasets.rejected()) == {"a-bad"}
    assert datasets.head().version == result["dataset_version"]
    assert steps.new_exports(settings) == []  # neither comes back as new
    with pytest.raises(IngestError, match="no export could be ingested.*a-bad: export a-bad "
                                          "was rejected"):
        steps.ingest(settings, ["a-bad"])


def test_nothing_ingested_fails_the_run_and_exports_show_why(tmp_path, cli_env, store, capsys):
    upload_export(store, cli_env, _bad_exports(tmp_path)["empty-archive"], export_id="e1")

    assert main(["ingest", "--new"]) == 1
    err = capsys.readouterr().err
    assert "no export could be ingested" in err and "holds no files" in err
    assert main(["ingest", "--new"]) == 0  # a rejected export is not new: the next run is green
    assert "no new exports" in capsys.readouterr().out

    for args in (["exports"], ["exports", "--new"]):
        assert main(["--json", *args]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [(r["export_id"], r["status"], r["dataset_version"]) for r in rows] == [
            ("e1", "rejected", None)]
        assert "holds no files" in rows[0]["reason"]
    assert main(["exports"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split()[:2] == ["e1", "rejected"] and "holds no files" in line


def test_an_operator_rejects_and_retries_an_export(tmp_path, cli_env, store, capsys):
    upload_export(store, cli_env, _export(tmp_path / "e1").root, export_id="e1")
    assert main(["exports", "retry", "e1"]) == 1
    assert "is not rejected (it is not in the ledger)" in capsys.readouterr().err

    assert main(["exports", "reject", "e1", "--reason", "wrong site"]) == 0
    assert "export e1 rejected: wrong site" in capsys.readouterr().out
    assert steps.new_exports(cli_env) == []
    assert main(["--json", "exports", "--new"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["status"], r["reason"]) for r in rows] == [
        ("rejected", "by an operator: wrong site")]
    assert main(["ingest", "e1"]) == 1
    assert "exports retry e1" in capsys.readouterr().err

    assert main(["exports", "retry", "e1"]) == 0
    assert "new again" in capsys.readouterr().out
    assert steps.new_exports(cli_env) == ["e1"]
    assert main(["--json", "ingest", "--new"]) == 0
    assert json.loads(capsys.readouterr().out)["exports"][0]["accepted"] == 16
    assert main(["exports", "reject", "e1", "--reason", "too late"]) == 1
    assert "only an export not taken in can be rejected" in capsys.readouterr().err
    assert DatasetStore(store, cli_env).entry("e1")["status"] == "ingested"
    assert main(["exports", "reject", "nope", "--reason", "x"]) == 1
    assert "not found in storage" in capsys.readouterr().err
    for action in ("reject", "retry"):
        with pytest.raises(SystemExit):
            main(["exports", action, "--help"])
        assert len(capsys.readouterr().out) > 200


# --- 2. file names that are not UTF-8 ---
BAD_NAME = os.fsdecode(b"TCGA_SA_S000_19950101_\xff\xfe.tif")  # surrogateescape


def test_folder_upload_skips_a_name_that_is_not_utf8(tmp_path, settings, store, caplog):
    report = _export(tmp_path / "e1")
    folder = report.root / report.patients[0]
    try:
        (folder / BAD_NAME).write_bytes(b"x")  # a bytes name on the file system
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    assert os.fsencode(folder / BAD_NAME).endswith(b"\xff\xfe.tif")
    good = sorted(p.relative_to(report.root).as_posix() for p in report.root.rglob("*.tif")
                  if p.name != BAD_NAME)

    with caplog.at_level(logging.WARNING):
        upload_export(store, settings, report.root, export_id="e1")

    uploaded = sorted(o.key.removeprefix("exports/e1/") for o in store.list("exports/e1/")
                      if o.key.endswith(".tif"))
    assert uploaded == good and len(good) == 32  # all the others went up
    assert "\\xff\\xfe.tif" in caplog.text and "not valid UTF-8" in caplog.text
    assert ingest_export(store, settings, "e1").counts["accepted"] == 16


def test_a_tar_member_named_in_no_utf8_is_quarantined(tmp_path, settings, store):
    report = _export(tmp_path / "e1")
    pid = report.patients[0]
    image = (report.root / pid / f"{pid}_1.tif").read_bytes()
    name = f"kaggle_3m/{pid}/{BAD_NAME}"
    archive = _tar_of(report.root, tmp_path / "e1.tar.gz", [(tarfile.TarInfo(name), image)])
    with tarfile.open(archive) as tf:  # the raw bytes are in the archive
        assert name in tf.getnames()
    upload_export(store, settings, archive)

    res = ingest_export(store, settings, "e1")

    assert res.counts["accepted"] == 16
    rows = res.quarantine[res.quarantine["reason"] == "bad_name"]
    assert list(rows["path"]) == [f"kaggle_3m/{pid}/TCGA_SA_S000_19950101_\\xff\\xfe.tif"]
    assert "not valid UTF-8" in rows.iloc[0].detail
    stored = DatasetStore(store, settings).quarantine(res.dataset_version)
    assert list(stored["path"]) == list(rows["path"])


# --- 3. an export that adds nothing ---
def test_ledger_and_dataset_record_agree_on_an_export_that_adds_nothing(tmp_path, settings, store,
                                                                       cli_env, capsys):
    root = _export(tmp_path / "e1").root
    upload_export(store, settings, root, export_id="e1")
    upload_export(store, settings, root, export_id="e1-again")
    result = steps.ingest(settings, ["e1", "e1-again"])

    datasets = DatasetStore(store, settings)
    version = result["dataset_version"]
    assert [r["status"] for r in result["exports"]] == ["ingested", "duplicate"]
    entries = datasets.entries()
    assert entries["e1-again"]["dataset_version"] == version
    assert entries["e1-again"]["status"] == "duplicate"
    assert f"dataset version {version}" in entries["e1-again"]["reason"]
    assert "e1" in entries["e1-again"]["reason"]
    for export_id, entry in entries.items():  # the ledger and the version records agree
        listed = export_id in datasets.record(entry["dataset_version"])["exports"]
        assert listed == (entry["status"] == "ingested"), export_id
    again = ingest_export(store, settings, "e1-again")  # a re-run keeps saying so
    assert again.already_ingested and again.status == "duplicate"
    assert main(["exports"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["e1-again", "duplicate", version]


# --- 4. one slice in two folders ---
def test_a_slice_in_two_folders_is_quarantined_with_both_paths(tmp_path, settings, store):
    report = _export(tmp_path / "src", patients=6)
    pid = report.patients[1]
    root = tmp_path / "e1"
    shutil.copytree(report.root, root / "batch1")
    second = root / "batch2" / pid
    second.mkdir(parents=True)
    first = root / "batch1" / pid
    # slice 1 twice, the second copy with another slice's mask
    shutil.copy(first / f"{pid}_1.tif", second / f"{pid}_1.tif")
    shutil.copy(first / f"{pid}_2_mask.tif", second / f"{pid}_1_mask.tif")
    # slice 3: image in one folder, mask in the other (never paired across folders)
    shutil.move(first / f"{pid}_3_mask.tif", second / f"{pid}_3_mask.tif")
    # slice 4 twice in one folder, written with a leading zero
    shutil.copy(first / f"{pid}_4.tif", first / f"{pid}_04.tif")
    upload_export(store, settings.model_copy(update={"max_quarantine_fraction": 0.5}), root)

    res = ingest_export(store, settings.model_copy(update={"max_quarantine_fraction": 0.5}),
                        "e1")

    q = res.quarantine
    assert set(q["reason"]) == {"duplicate_slice"}
    by_slice = q.groupby("slice_index")["path"].apply(sorted).to_dict()
    assert by_slice == {
        1: [f"batch1/{pid}/{pid}_1.tif", f"batch1/{pid}/{pid}_1_mask.tif",
            f"batch2/{pid}/{pid}_1.tif", f"batch2/{pid}/{pid}_1_mask.tif"],
        3: [f"batch1/{pid}/{pid}_3.tif", f"batch2/{pid}/{pid}_3_mask.tif"],
        4: [f"batch1/{pid}/{pid}_04.tif", f"batch1/{pid}/{pid}_4.tif",
            f"batch1/{pid}/{pid}_4_mask.tif"]}
    for row in q.itertuples():  # every row names all the copies
        for path in by_slice[row.slice_index]:
            assert path in row.detail
    manifest = DatasetStore(store, settings).manifest(res.dataset_version)
    assert sorted(manifest[manifest["patient_id"] == pid]["slice_index"]) == [2]
    assert len(manifest) == 6 * 4 - 3


# --- 5. archive members that are not plain files, stale work folders, tiny and PNG slices ---
def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_archive_links_and_escaping_paths_are_quarantined(tmp_path, settings, store):
    report = _export(tmp_path / "e1", patients=6)
    pid = report.patients[0]
    tif = (report.root / pid / f"{pid}_1.tif").read_bytes()
    extra = [(_member(f"kaggle_3m/{pid}/{pid}_9.tif", tarfile.SYMTYPE, "/etc/passwd"), None),
             (_member(f"kaggle_3m/{pid}/{pid}_9_mask.tif", tarfile.LNKTYPE,
                      f"kaggle_3m/{pid}/{pid}_1.tif"), None),
             (_member("../outside.tif"), tif), (_member("/abs/olute.tif"), tif),
             (_member("kaggle_3m/fifo", tarfile.FIFOTYPE), None)]
    upload_export(store, settings, _tar_of(report.root, tmp_path / "e1.tar.gz", extra))

    res = ingest_export(store, settings, "e1")

    assert res.counts["accepted"] == 24 and res.counts["quarantined"] == 5
    got = dict(zip(res.quarantine["path"], res.quarantine["reason"], strict=True))
    assert got == {f"kaggle_3m/{pid}/{pid}_9.tif": "not_a_file",
                   f"kaggle_3m/{pid}/{pid}_9_mask.tif": "not_a_file",
                   "../outside.tif": "unsafe_path", "/abs/olute.tif": "unsafe_path",
                   "kaggle_3m/fifo": "not_a_file"}
    assert "symbolic link to '/etc/passwd'" in res.quarantine.iloc[
        list(got).index(f"kaggle_3m/{pid}/{pid}_9.tif")].detail
    assert not (settings.home_dir / "outside.tif").exists()


def test_zip_traversal_and_links_are_quarantined(tmp_path, settings, store):
    report = _export(tmp_path / "e1", patients=6)
    archive = make_archive(report.root, tmp_path / "e1.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("../../evil.tif", b"II*\x00")
        link = zipfile.ZipInfo("kaggle_3m/link.tif")
        link.external_attr = 0o120777 << 16  # a symbolic link, as zip -y stores one
        zf.writestr(link, "/etc/passwd")
    upload_export(store, settings, archive)

    res = ingest_export(store, settings, "e1")

    assert dict(zip(res.quarantine["path"], res.quarantine["reason"], strict=True)) == {
        "../../evil.tif": "unsafe_path", "kaggle_3m/link.tif": "not_a_file"}
    assert res.counts["accepted"] == 24


def test_a_killed_ingest_leaves_no_folder_behind_for_long(tmp_path, settings, store):
    upload_export(store, settings, _export(tmp_path / "e1").root, export_id="e1")
    root = settings.home_dir / "tmp"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    old = time.time() - STALE_WORKDIR_SECONDS - 60
    stale = root / f"{WORKDIR_PREFIX}{gone}-killed"
    fresh = root / f"{WORKDIR_PREFIX}{gone}-running"
    alive = root / f"{WORKDIR_PREFIX}{os.getpid()}-long"
    for folder in (stale, fresh, alive):
        (folder / "extracted").mkdir(parents=True)
        (folder / "e1.tar.gz").write_bytes(b"x" * 100)
    for folder in (stale, alive):
        os.utime(folder, (old, old))

    ingest_export(store, settings, "e1")

    assert not stale.exists()
    assert fresh.exists() and alive.exists()  # too young, or its process still runs
    assert sorted(p.name for p in root.iterdir()) == sorted([fresh.name, alive.name])


def test_tiny_slices_and_pngs_named_tif_are_quarantined(tmp_path, settings, store):
    report = _export(tmp_path / "e1", patients=6)
    folder = report.root / report.patients[0]
    pid = report.patients[0]
    (folder / f"{pid}_7.tif").write_bytes(encode_tiff(np.full((1, 1, 3), 9, np.uint8)))
    (folder / f"{pid}_7_mask.tif").write_bytes(encode_tiff(np.zeros((1, 1), np.uint8)))
    image = decode_image((folder / f"{pid}_1.tif").read_bytes())
    ok, png = cv2.imencode(".png", image[..., ::-1])
    assert ok
    (folder / f"{pid}_8.tif").write_bytes(png.tobytes())
    (folder / f"{pid}_8_mask.tif").write_bytes((folder / f"{pid}_1_mask.tif").read_bytes())
    upload_export(store, settings, report.root, export_id="e1")

    res = ingest_export(store, settings, "e1")

    got = dict(zip(res.quarantine["path"], res.quarantine["reason"], strict=True))
    assert got == {f"{pid}/{pid}_7.tif": "too_small", f"{pid}/{pid}_8.tif": "not_tiff"}
    details = " ".join(res.quarantine["detail"])
    assert f"1x1 pixels, the smallest accepted is {MIN_SLICE_SIZE}x{MIN_SLICE_SIZE}" in details
    assert "not a TIFF" in details and "\\x89PNG" in details
    assert res.counts["accepted"] == 24


@pytest.mark.parametrize("size", [MIN_SLICE_SIZE - 1, 1])
def test_decoding_refuses_slices_under_the_minimum(size):
    data = encode_tiff(np.zeros((size, MIN_SLICE_SIZE, 3), np.uint8))
    with pytest.raises(SliceError) as err:
        decode_image(data, MIN_SLICE_SIZE)
    assert err.value.reason == "too_small"
    assert decode_image(encode_tiff(np.zeros((MIN_SLICE_SIZE,) * 2 + (3,), np.uint8)),
                        MIN_SLICE_SIZE).shape == (MIN_SLICE_SIZE, MIN_SLICE_SIZE, 3)
