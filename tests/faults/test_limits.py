"""Input built to exhaust disk and memory: archive bombs, files over the size limit, TIFFs whose
header claims 10,000 x 10,000 pixels, studies with too many slices or pixels.

Each attack is generated here, small: a handwritten TIFF of 10,000 x 10,000 zeros deflated to
about 300 KB, archives of zeros with the limit settings lowered. Over a limit is a quarantine
row or a rejected export / study with its reason, never a decoded giant; the peak memory of a
process fed the attacks is measured in a child process (``resource.getrusage``).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from brain_tumor import steps
from brain_tumor.devtools.synth import SynthSpec, make_archive, make_export
from brain_tumor.ingest.exports import (
    MEMBER_OVERHEAD_BYTES,
    ArchiveLimits,
    ArchiveTooLarge,
    _extract,
    upload_export,
)
from brain_tumor.ingest.imaging import (
    SliceError,
    check_header,
    decode_image,
    decode_mask,
    encode_tiff,
    read_tiff_header,
)
from brain_tumor.ingest.run import ingest_export
from brain_tumor.scoring.contracts import StudyRejected
from brain_tumor.scoring.readers import StudyLimits, TiffFolderReader
from brain_tumor.settings import Settings, settings_to_env
from brain_tumor.store.datasets import DatasetStore
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.storage import ObjectStore

REPO = Path(__file__).resolve().parents[2]
SPEC = SynthSpec(patients=4, slices=4, size=32)
GIANT = 10_000  # pixels a side the hostile TIFFs claim
MiB = 2**20


# --- hostile inputs ---
def _tiff(width: int, height: int, image: np.ndarray | None = None, *, order: str = "<",
          big: bool = False, deflate: bool = False) -> bytes:
    """A 3-channel 8-bit TIFF written by hand, one strip: the rows of image, or zeros streamed
    through zlib (a 10,000 x 10,000 image is never in memory); either byte order, classic or
    BigTIFF."""
    row = width * 3
    rows: Iterator[bytes] = ((image[y].tobytes() for y in range(height)) if image is not None
                             else (bytes(row) for _ in range(height)))
    if deflate:
        z = zlib.compressobj(6)
        body = b"".join(z.compress(r) for r in rows) + z.flush()
    else:
        body = b"".join(rows)
    word, count, entry, head = ("Q", "Q", 20, 16) if big else ("I", "H", 12, 8)
    codes = {3: "H", 4: "I", 16: "Q"}
    strip = head
    extra = strip + len(body) + len(body) % 2  # out-of-line values start here
    offset_type = 16 if big else 4
    fields = [(256, 4, [width]), (257, 4, [height]), (258, 3, [8, 8, 8]),
              (259, 3, [8 if deflate else 1]), (262, 3, [2]), (273, offset_type, [strip]),
              (277, 3, [3]), (278, 4, [height]), (279, offset_type, [len(body)]), (284, 3, [1])]
    value_room = struct.calcsize(word)
    outside = b""
    entries = b""
    for tag, kind, values in fields:
        packed = struct.pack(f"{order}{len(values)}{codes[kind]}", *values)
        if len(packed) > value_room:
            value = struct.pack(order + word, extra + len(outside))
            outside += packed
        else:
            value = packed.ljust(value_room, b"\0")
        entries += struct.pack(f"{order}HH{word}", tag, kind, len(values)) + value
    ifd = extra + len(outside)
    magic = (b"II" if order == "<" else b"MM")
    header = (magic + struct.pack(order + "HHHQ", 43, 8, 0, ifd) if big
              else magic + struct.pack(order + "HI", 42, ifd))
    return (header + body + b"\0" * (len(body) % 2) + outside
            + struct.pack(order + count, len(fields)) + entries + struct.pack(order + word, 0))


@pytest.fixture(scope="module")
def giant() -> bytes:
    """A real TIFF of 10,000 x 10,000 x 3 zeros (300 MB decoded), about 300 KB of bytes."""
    return _tiff(GIANT, GIANT, deflate=True)


def _zeros(size: int) -> io.RawIOBase:
    """A stream of size zero bytes (nothing held in memory)."""

    class Zeros(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buf: bytearray) -> int:  # type: ignore[override]
            n = min(len(buf), self.left)
            buf[:n] = bytes(n)
            self.left -= n
            return n

    return Zeros()


def _bomb(root: Path, dest: Path, zero_bytes: int, pieces: int = 1) -> Path:
    """A .tar.gz or .zip of an export folder plus zero-filled members (zero_bytes in all)."""
    files = [(p, f"kaggle_3m/{p.relative_to(root).as_posix()}")
             for p in sorted(root.rglob("*")) if p.is_file()]
    piece = zero_bytes // pieces
    if dest.name.endswith(".zip"):
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, name in files:
                zf.write(path, name)
            for i in range(pieces):
                with zf.open(f"kaggle_3m/zeros_{i}.bin", "w", force_zip64=True) as out:
                    for _ in range(piece // MiB):
                        out.write(bytes(MiB))
        return dest
    with tarfile.open(dest, "w:gz") as tf:
        for path, name in files:
            tf.add(path, name)
        for i in range(pieces):
            info = tarfile.TarInfo(f"kaggle_3m/zeros_{i}.bin")
            info.size = piece
            tf.addfile(info, _zeros(piece))
    return dest


def _export(root: Path, **spec: object):
    return make_export(root, SynthSpec(**{**SPEC.__dict__, **spec}))


# --- TIFF headers ---
@pytest.mark.parametrize("shape", [(20, 30, 3), (17, 5), (64, 48, 3), (300, 1, 3)])
def test_header_of_encode_tiff_output_is_read_without_decoding(shape):
    data = encode_tiff(np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8))
    header = read_tiff_header(data)
    assert (header.height, header.width) == shape[:2]
    assert header.samples == (shape[2] if len(shape) == 3 else 1) and header.bits == 8


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("big", [False, True], ids=["classic", "bigtiff"])
@pytest.mark.parametrize("deflate", [False, True], ids=["raw", "deflate"])
def test_header_is_read_in_either_byte_order_and_matches_what_decodes(order, big, deflate):
    image = np.random.default_rng(2).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    data = _tiff(40, 24, image, order=order, big=big, deflate=deflate)
    header = read_tiff_header(data)
    assert (header.width, header.height, header.samples, header.bits) == (40, 24, 3, 8)
    np.testing.assert_array_equal(decode_image(data, max_pixels=40 * 24), image)


@pytest.mark.parametrize("data", [b"II*\x00", b"II*\x00\xff\xff\xff\x00", b"MM\x00*\x00\x00\x00\x08"
                                  + b"\x00\x01", b"II+\x00\x04\x00\x00\x00" + bytes(8)])
def test_a_broken_header_is_unreadable(data):
    with pytest.raises(SliceError) as err:
        check_header(data, max_pixels=100)
    assert err.value.reason == "unreadable"


def test_a_giant_tiff_is_too_large_by_its_header(giant):
    assert len(giant) < 1 * MiB
    header = read_tiff_header(giant)
    assert (header.width, header.height, header.decoded_bytes) == (GIANT, GIANT, 3 * GIANT**2)
    for decode, what in ((decode_image, "image"), (decode_mask, "mask")):
        with pytest.raises(SliceError) as err:
            decode(giant, max_pixels=2048 * 2048)
        assert (err.value.reason, err.value.part) == ("too_large", what)
        assert "10000x10000 pixels" in err.value.detail and "not decoded" in err.value.detail


def test_a_png_named_tif_is_never_decoded():
    ok, png = cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))
    assert ok
    for data in (png.tobytes(), png.tobytes()[:40]):  # whole or truncated: not a TIFF either way
        with pytest.raises(SliceError) as err:
            decode_image(data, max_pixels=10)
        assert err.value.reason == "not_tiff" and "PNG" in err.value.detail


# --- ingest ---
def test_files_over_the_limits_are_quarantined_without_their_bytes(tmp_path, make_settings,
                                                                   giant):
    settings = make_settings(max_file_bytes=MiB, max_quarantine_fraction=0.5)
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    report = _export(tmp_path / "e1")
    pid = report.patients[0]
    folder = report.root / pid
    (folder / f"{pid}_1.tif").write_bytes(os.urandom(2 * MiB))  # over max_file_bytes
    (folder / f"{pid}_2.tif").write_bytes(giant)  # 10,000 x 10,000 by its header
    (folder / f"{pid}_3_mask.tif").write_bytes(giant)
    upload_export(store, settings, report.root, export_id="e1")

    res = ingest_export(store, settings, "e1")

    rows = {r["path"]: r for r in res.quarantine.to_dict("records")}
    assert {p: r["reason"] for p, r in rows.items()} == {
        f"{pid}/{pid}_1.tif": "too_large", f"{pid}/{pid}_2.tif": "too_large",
        f"{pid}/{pid}_3_mask.tif": "too_large"}
    big = rows[f"{pid}/{pid}_1.tif"]
    assert f"{2 * MiB:,} bytes, over the limit of {MiB:,} bytes" in big["detail"]
    assert pd.isna(big["blob_key"]) and pd.isna(big["sha256"])  # never read, never stored
    assert "10000x10000 pixels" in rows[f"{pid}/{pid}_2.tif"]["detail"]
    assert res.counts["accepted"] == 13
    blobs = list(store.list(settings.key("blobs")))
    assert blobs and max(o.size for o in blobs) <= MiB


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_an_archive_member_over_the_file_limit_is_left_out_and_the_rest_taken(tmp_path,
                                                                              make_settings,
                                                                              suffix):
    settings = make_settings(max_file_bytes=MiB)
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    archive = _bomb(_export(tmp_path / "src").root, tmp_path / f"e1{suffix}", 3 * MiB)
    upload_export(store, settings, archive)

    res = ingest_export(store, settings, "e1")

    assert res.counts["accepted"] == 16
    (row,), = [res.quarantine.to_dict("records")]
    assert (row["path"], row["reason"]) == ("kaggle_3m/zeros_0.bin", "too_large")
    assert f"{3 * MiB:,} bytes, over the limit of {MiB:,} bytes" in row["detail"]
    assert "not extracted" in row["detail"] and pd.isna(row["blob_key"])
    names, skipped = _extract(archive, tmp_path / "out", ArchiveLimits.from_settings(settings))
    assert "kaggle_3m/zeros_0.bin" not in names and len(skipped) == 1
    assert not (tmp_path / "out" / "kaggle_3m" / "zeros_0.bin").exists()


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_an_archive_bomb_stops_extraction_and_is_rejected_in_the_ledger(tmp_path, make_settings,
                                                                        suffix):
    settings = make_settings(max_file_bytes=MiB)  # each member is under it: the sum is not
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    root = _export(tmp_path / "src").root
    bomb = _bomb(root, tmp_path / f"a-bomb{suffix}", 64 * MiB, pieces=64)
    assert bomb.stat().st_size < 1 * MiB
    upload_export(store, settings, bomb)
    upload_export(store, settings, root, export_id="b-good")

    result = steps.ingest(settings, ["a-bomb", "b-good"])

    assert [r["export_id"] for r in result["exports"]] == ["b-good"]
    (rejected,) = result["rejected"]
    assert rejected["export_id"] == "a-bomb" and rejected["recorded"]
    entry = DatasetStore(store, settings).entry("a-bomb")
    assert entry["status"] == "rejected" and entry["dataset_version"] is None
    assert entry["reason"].startswith(f"archive a-bomb{suffix} is an archive bomb (archive_bomb)")
    assert "100 times its" in entry["reason"] and "extraction stopped" in entry["reason"]
    assert steps.new_exports(settings) == []
    out = tmp_path / "out"
    limits = ArchiveLimits.from_settings(settings)
    with pytest.raises(ArchiveTooLarge) as err:
        _extract(bomb, out, limits)
    assert err.value.reason == "archive_bomb"
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert written <= limits.budget(bomb.stat().st_size)[0] < 64 * MiB


def test_an_archive_over_max_extracted_bytes_is_rejected(tmp_path, make_settings):
    settings = make_settings(max_extracted_bytes=20_000, max_file_bytes=8_000)
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    upload_export(store, settings, make_archive(_export(tmp_path / "src").root,
                                                tmp_path / "e1.tar.gz"))

    with pytest.raises(ArchiveTooLarge, match=r"archive e1.tar.gz is too large \(too_large\): "
                                              r"its members expand to more than 20,000 bytes "
                                              r"\(max_extracted_bytes\)"):
        ingest_export(store, settings, "e1")
    assert DatasetStore(store, settings).head().version is None


def test_countless_empty_members_count_too(tmp_path):
    archive = tmp_path / "empty.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for i in range(4000):
            tf.addfile(tarfile.TarInfo(f"kaggle_3m/P/P_{i}.txt"))
    limits = ArchiveLimits(file_bytes=64 * 1024, extracted_bytes=2**40, ratio=10)
    assert 4000 * MEMBER_OVERHEAD_BYTES > limits.budget(archive.stat().st_size)[0]
    with pytest.raises(ArchiveTooLarge, match="archive_bomb"):
        _extract(archive, tmp_path / "out", limits)


# --- scoring ---
def _study(store: ObjectStore, settings: Settings, study_id: str, slices: list[bytes]) -> list[str]:
    incoming = IncomingStore(store, settings)
    keys = []
    for i, data in enumerate(slices, start=1):
        keys.append(incoming.prefix(study_id) + f"S_{i}.tif")
        store.put(keys[-1], data)
    incoming.seal(study_id)
    return keys


def _slice(size: int = 32, seed: int = 0) -> bytes:
    return encode_tiff(np.random.default_rng(seed).integers(0, 255, (size, size, 3), np.uint8))


@pytest.fixture
def reader_env(make_settings):
    def make(**limits: int) -> tuple[ObjectStore, Settings, TiffFolderReader]:
        settings = make_settings(**limits)
        store = ObjectStore.from_settings(settings)
        store.ensure_bucket()
        return store, settings, TiffFolderReader(IncomingStore(store, settings))
    return make


def test_a_study_with_more_slices_than_the_limit_is_rejected_unread(reader_env):
    store, settings, reader = reader_env(max_study_slices=4)
    _study(store, settings, "many", [_slice(seed=i) for i in range(5)])
    with pytest.raises(StudyRejected) as err:
        reader.read("many")
    assert err.value.reason == "too_many_slices"
    assert err.value.detail.startswith("5 slices, the most accepted is 4 (max_study_slices)")
    _study(store, settings, "four", [_slice(seed=i) for i in range(4)])
    assert len(reader.read("four").images) == 4


def test_a_study_of_giant_tiffs_is_rejected_before_decoding(reader_env, giant):
    store, settings, reader = reader_env()
    keys = _study(store, settings, "giants", [_slice(), giant, giant, giant])
    with pytest.raises(StudyRejected) as err:
        reader.read("giants")
    assert err.value.reason == "too_large" and err.value.files == keys[1:]
    assert "3 of 4 slice(s) unusable" in err.value.detail and "10000x10000" in err.value.detail


def test_a_study_over_its_pixel_or_byte_budget_is_rejected(reader_env):
    store, settings, reader = reader_env(max_study_pixels=3 * 32 * 32, max_file_bytes=6000)
    keys = _study(store, settings, "wide", [_slice(seed=i) for i in range(4)])
    with pytest.raises(StudyRejected) as err:
        reader.read("wide")
    assert err.value.reason == "too_large" and err.value.files == keys
    assert "4,096 pixels by their headers, over the limit of 3,072" in err.value.detail
    big = _study(store, settings, "heavy", [_slice(), _slice(64)])
    with pytest.raises(StudyRejected) as err:
        reader.read("heavy")
    assert err.value.reason == "too_large" and err.value.files == big[1:]
    assert "(max_file_bytes)" in err.value.detail and "none was read" in err.value.detail
    assert StudyLimits.from_settings(settings).study_pixels == 3 * 32 * 32


# --- peak memory of a process fed the attacks ---
CHILD = r"""
import json, os, resource, sys
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
from brain_tumor.ingest.run import ingest_exports
from brain_tumor.scoring.contracts import StudyRejected
from brain_tumor.scoring.study import score_study
from brain_tumor.ml.predict import load_model_version
from brain_tumor.settings import load_settings
from brain_tumor.store.storage import ObjectStore

def status(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))

def peak():
    try:  # the peak since the reset below, where the kernel allows resetting it
        return status("VmHWM")
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

settings = load_settings()
store = ObjectStore.from_settings(settings)
model_settings = settings.model_copy(update={"s3_bucket": sys.argv[1]})
model = load_model_version(ObjectStore.from_settings(model_settings), model_settings, sys.argv[2])
list(store.list(""))
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak to the current RSS: the model is loaded
    baseline = status("VmRSS")
except (OSError, StopIteration):
    baseline = peak()
run = ingest_exports(store, settings, ["bomb", "giants"])
try:
    score_study(store, settings, model, "giants")
    reason = None
except StudyRejected as exc:
    reason = exc.reason
print(json.dumps({"baseline": baseline, "peak": peak(), "study": reason,
                  "rejected": [r.export_id for r in run.rejected],
                  "ingested": [r.export_id for r in run.results]}))
"""


def test_peak_memory_stays_bounded_under_the_attacks(tmp_path, trained, giant):
    """Default limits; a 64 MiB bomb in 64 members, an export and a study of giant TIFFs,
    scored with the model loaded: a child's peak RSS stays far below what decoding takes."""
    model_settings, record = trained
    settings = model_settings.model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}"})
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    root = _export(tmp_path / "src").root
    upload_export(store, settings, _bomb(root, tmp_path / "bomb.tar.gz", 64 * MiB, pieces=64))
    report = _export(tmp_path / "giants")
    for pid in report.patients:
        for path in (report.root / pid).glob(f"{pid}_[12]*.tif"):
            path.write_bytes(giant)
    upload_export(store, settings, report.root, export_id="giants")
    _study(store, settings, "giants", [giant, giant, giant])
    env = {**os.environ, **settings_to_env(settings)}

    proc = subprocess.run([sys.executable, "-c", CHILD, model_settings.s3_bucket,
                           record["model_version"]], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)

    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"peak RSS above baseline: {(got['peak'] - got['baseline']) / MiB:.0f} MiB "
          f"(baseline {got['baseline'] / MiB:.0f} MiB)")
    assert got["rejected"] == ["bomb", "giants"] and got["study"] == "too_large"
    assert got["peak"] - got["baseline"] < 250 * MiB  # one giant decoded takes 670 MiB
