"""brain_tumor.devtools.synth: layout, determinism, channel order, masks, bad kinds, archives."""

from __future__ import annotations

import hashlib
import re
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from brain_tumor.devtools.synth import (
    BAD_KINDS,
    SynthSpec,
    lesion_mask,
    make_archive,
    make_export,
    make_slice,
)
from brain_tumor.ingest.imaging import encode_tiff

PATIENT_RE = re.compile(r"^TCGA_[A-Z]{2}_[A-Z0-9]{4}_\d{8}$")
FILE_RE = re.compile(r"^(?P<pid>TCGA_[A-Z]{2}_[A-Z0-9]{4}_\d{8})_(?P<n>\d+)(?P<mask>_mask)?\.tif$")
SMALL = SynthSpec(patients=3, slices=4, size=16, seed=3)


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read(path: Path) -> np.ndarray | None:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("export")
    spec = SynthSpec(patients=4, slices=6, size=32, seed=0, tumor_free_patients=1)
    return make_export(root, spec)


@pytest.fixture(scope="module")
def bad_export(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bad")
    return make_export(root, SynthSpec(patients=3, slices=3, size=16, bad=BAD_KINDS))


def test_layout_and_names(export) -> None:
    assert len(export.patients) == 4 and len(set(export.patients)) == 4
    assert sorted(p.name for p in export.root.iterdir()) == sorted(export.patients)
    for pid in export.patients:
        assert PATIENT_RE.match(pid), pid
        names = sorted(p.name for p in (export.root / pid).iterdir())
        expected = sorted([f"{pid}_{n}.tif" for n in range(1, 7)]
                          + [f"{pid}_{n}_mask.tif" for n in range(1, 7)])
        assert names == expected
        for name in names:
            m = FILE_RE.match(name)
            assert m and m["pid"] == pid


def test_institutions_spread_and_offset(tmp_path: Path) -> None:
    a = make_export(tmp_path / "a", SynthSpec(patients=3, slices=1, size=16))
    b = make_export(tmp_path / "b", SynthSpec(patients=3, slices=1, size=16, first_patient=3))
    assert len({pid.split("_")[1] for pid in a.patients}) == 3
    assert not set(a.patients) & set(b.patients)
    c = make_export(tmp_path / "c", SynthSpec(patients=1, slices=1, size=16, patient_prefix="TEST"))
    assert c.patients[0].startswith("TEST_")


def test_deterministic_bytes(tmp_path: Path) -> None:
    spec = SynthSpec(patients=2, slices=3, size=16, seed=5, bad=BAD_KINDS)
    make_export(tmp_path / "a", spec)
    make_export(tmp_path / "b", spec)
    make_export(tmp_path / "c", SynthSpec(patients=2, slices=3, size=16, seed=6, bad=BAD_KINDS))
    ha, hb, hc = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert ha == hb
    assert ha.keys() == hc.keys() and ha != hc


def test_channel_order_round_trip(tmp_path: Path) -> None:
    lesion = (0.5, 0.5, 0.15)
    image, mask = make_slice(np.random.default_rng(0), 32, lesion)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert mask.shape == (32, 32) and mask.dtype == np.uint8
    path = tmp_path / "x.tif"
    path.write_bytes(encode_tiff(image))
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, image)
    inside = mask == 255
    assert inside.any() and np.array_equal(inside, lesion_mask(32, lesion))
    flair = back[..., 1].astype(float)
    assert flair[inside].mean() > flair[~inside].mean() + 40
    # Within the brain, the lesion stands out most in FLAIR.
    brain = (back.sum(axis=-1) > 60) & ~inside
    contrast = [back[..., c][inside].mean() - back[..., c][brain].mean() for c in range(3)]
    assert int(np.argmax(contrast)) == 1


def test_make_slice_sizes_and_no_lesion() -> None:
    for size in (16, 17, 64, 100):
        image, mask = make_slice(np.random.default_rng(1), size, (0.4, 0.6, 0.1))
        assert image.shape == (size, size, 3) and mask.shape == (size, size)
        assert mask.any()
    image, mask = make_slice(np.random.default_rng(1), 16, None)
    assert not mask.any()
    with pytest.raises(ValueError):
        make_slice(np.random.default_rng(1), 8, None)


def test_masks_binary_and_tumor_patients(export) -> None:
    tumor_total = 0
    for i, pid in enumerate(export.patients):
        flags = []
        for n in range(1, 7):
            mask = _read(export.root / pid / f"{pid}_{n}_mask.tif")
            assert mask.dtype == np.uint8 and mask.shape == (32, 32)
            assert set(np.unique(mask)) <= {0, 255}
            flags.append(bool(mask.any()))
            image = _read(export.root / pid / f"{pid}_{n}.tif")
            assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
        tumor_total += sum(flags)
        if i == 0:
            assert not any(flags)
        else:
            assert any(flags)
            first, last = flags.index(True), len(flags) - flags[::-1].index(True)
            assert all(flags[first:last]), f"tumor slices not contiguous: {flags}"
    assert export.slices == 4 * 6
    assert export.tumor_slices == tumor_total
    assert export.bad_files == {}


def test_all_tumor_free_and_min_one_tumor_slice(tmp_path: Path) -> None:
    spec = SynthSpec(patients=2, slices=3, size=16, tumor_free_patients=2)
    free = make_export(tmp_path / "f", spec)
    assert free.tumor_slices == 0
    few = make_export(tmp_path / "t", SynthSpec(patients=2, slices=3, size=16,
                                                tumor_free_patients=0, tumor_fraction=0.0))
    assert few.tumor_slices == 2


def test_bad_spec_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_export(tmp_path, SynthSpec(bad=("nope",)))
    with pytest.raises(ValueError):
        make_export(tmp_path, SynthSpec(size=8))


def test_bad_files_accounting(bad_export) -> None:
    root = bad_export.root
    assert set(bad_export.bad_files.values()) == set(BAD_KINDS)
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert set(bad_export.bad_files) <= on_disk
    good = on_disk - set(bad_export.bad_files)
    assert len(good) == 2 * bad_export.slices == 2 * 3 * 3
    for rel in good:
        m = FILE_RE.match(rel.split("/")[1])
        assert m and 1 <= int(m["n"]) <= 3


def _files(report, kind: str) -> dict[str, Path]:
    """Map 'image'/'mask'/'other' to the bad files written for kind."""
    out = {}
    for rel, k in report.bad_files.items():
        if k == kind:
            name = rel.split("/")[1]
            is_pair = FILE_RE.match(name)
            key = "mask" if name.endswith("_mask.tif") else "image" if is_pair else "other"
            out[key] = report.root / rel
    return out


def test_bad_kinds_are_really_bad(bad_export) -> None:
    def files(kind: str) -> dict[str, Path]:
        return _files(bad_export, kind)

    def valid_mask(path: Path) -> None:
        m = _read(path)
        assert m is not None and m.shape == (16, 16) and set(np.unique(m)) <= {0, 255}

    f = files("corrupt")
    assert _read(f["image"]) is None and not f["image"].read_bytes().startswith(b"II*\x00")
    valid_mask(f["mask"])

    f = files("truncated")
    assert f["image"].read_bytes()[:4] == b"II*\x00"
    assert _read(f["image"]) is None
    valid_mask(f["mask"])

    f = files("missing_mask")
    assert set(f) == {"image"} and _read(f["image"]).shape == (16, 16, 3)
    assert not Path(str(f["image"])[: -len(".tif")] + "_mask.tif").exists()

    f = files("orphan_mask")
    assert set(f) == {"mask"}
    valid_mask(f["mask"])
    assert not Path(str(f["mask"]).replace("_mask.tif", ".tif")).exists()

    f = files("shape_mismatch")
    assert _read(f["image"]).shape[:2] == (16, 16) and _read(f["mask"]).shape != (16, 16)

    f = files("nonbinary_mask")
    values = set(np.unique(_read(f["mask"])).tolist())
    assert values - {0, 255} and 255 in values

    f = files("uint16")
    img = _read(f["image"])
    assert img.dtype == np.uint16 and img.shape == (16, 16, 3)
    valid_mask(f["mask"])

    f = files("channels")
    assert _read(f["image"]).shape == (16, 16, 4)
    valid_mask(f["mask"])

    f = files("bad_name")
    assert set(f) == {"other"} and not FILE_RE.match(f["other"].name)
    assert _read(f["other"]) is not None

    f = files("wrong_size")
    assert _read(f["image"]).shape == (32, 32, 3) and _read(f["mask"]).shape == (32, 32)


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz", ".tar.xz"])
def test_make_archive(tmp_path: Path, suffix: str) -> None:
    report = make_export(tmp_path / "src", SMALL)
    dest = make_archive(report.root, tmp_path / "out" / f"export{suffix}")
    assert dest.exists()
    expected = {f"kaggle_3m/{p.relative_to(report.root).as_posix()}"
                for p in report.root.rglob("*") if p.is_file()}
    if suffix == ".zip":
        with zipfile.ZipFile(dest) as zf:
            names = set(zf.namelist())
            sample = sorted(names)[0]
            data = zf.read(sample)
    else:
        with tarfile.open(dest, "r:*") as tf:
            names = {m.name for m in tf.getmembers() if m.isfile()}
            sample = sorted(names)[0]
            data = tf.extractfile(sample).read()
    assert names == expected
    assert data == (report.root / sample.removeprefix("kaggle_3m/")).read_bytes()


def test_make_archive_rejects_unknown_suffix(tmp_path: Path) -> None:
    report = make_export(tmp_path / "src", SynthSpec(patients=1, slices=1, size=16))
    with pytest.raises(ValueError):
        make_archive(report.root, tmp_path / "export.rar")
