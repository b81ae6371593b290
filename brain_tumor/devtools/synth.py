"""Deterministic synthetic TCIA exports in the LGG ``kaggle_3m`` layout, written as real TIFFs."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import logging
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from brain_tumor.ingest.imaging import encode_tiff

log = logging.getLogger(__name__)

BAD_KINDS = (
    "corrupt", "truncated", "missing_mask", "orphan_mask", "shape_mismatch",
    "nonbinary_mask", "uint16", "channels", "bad_name", "wrong_size",
)
INSTITUTIONS = ("SA", "SB", "SC", "SD", "SE")
ARCHIVE_TOP = "kaggle_3m"
_BASE_DATE = dt.date(1995, 1, 1)


@dataclass(frozen=True)
class SynthSpec:
    """What to generate: patients, slices per patient, image size, seed, tumors, bad files."""

    patients: int = 6
    slices: int = 8
    size: int = 32
    seed: int = 0
    tumor_free_patients: int = 1
    tumor_fraction: float = 0.5
    bad: tuple[str, ...] = ()
    patient_prefix: str = "TCGA"
    first_patient: int = 0


@dataclass(frozen=True)
class SynthReport:
    """What make_export wrote; counts cover good slice pairs only."""

    root: Path
    patients: list[str]
    slices: int
    tumor_slices: int
    bad_files: dict[str, str] = field(default_factory=dict)


def patient_id(index: int, prefix: str = "TCGA") -> str:
    """Deterministic patient id like ``TCGA_SB_S001_19960219`` for a global patient index."""
    if not 0 <= index <= 9999:
        raise ValueError(f"patient index out of range: {index}")
    code = f"S{index:03d}" if index < 1000 else f"{index:04d}"
    date = _BASE_DATE + dt.timedelta(days=(index * 53) % 5000)
    return f"{prefix}_{INSTITUTIONS[index % len(INSTITUTIONS)]}_{code}_{date:%Y%m%d}"


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency texture in [-1, 1]: a coarse random grid upsampled with cubic interpolation."""
    coarse = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float64)


def lesion_mask(size: int, lesion: tuple[float, float, float]) -> np.ndarray:
    """Boolean ellipse for lesion (cx, cy, r) given as fractions of size; never empty."""
    cx, cy, r = lesion
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    rx = max(1.5, r * size)
    ry = max(1.5, 0.75 * r * size)
    inside = ((xx - cx * size) / rx) ** 2 + ((yy - cy * size) / ry) ** 2 <= 1.0
    if not inside.any():
        inside[min(size - 1, int(cy * size)), min(size - 1, int(cx * size))] = True
    return inside


def make_slice(
    rng: np.random.Generator, size: int, lesion: tuple[float, float, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (image HxWx3 uint8 in file channel order, mask HxW uint8 in {0,255})."""
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    u, v = (xx / size - 0.5) / 0.42, (yy / size - 0.5) / 0.36
    radius = np.sqrt(u**2 + v**2)
    head = radius <= 1.0
    skull = (radius > 0.88) & head
    texture = _smooth_noise(rng, size, 5)
    detail = _smooth_noise(rng, size, max(4, size // 4))
    base = np.where(head, 1.0 - 0.25 * radius**2, 0.0)
    pre = 120 * base + 18 * texture + 8 * detail
    flair = 95 * base + 14 * texture - 10 * detail
    post = 110 * base + 15 * texture + 6 * detail + 70 * skull
    if lesion is not None:
        inside = lesion_mask(size, lesion)
        bump = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 0.6).astype(np.float64)
        bump = np.maximum(bump, inside)
        flair += 110 * bump
        pre -= 20 * bump
        post += 15 * bump
        mask = np.where(inside, 255, 0).astype(np.uint8)
    else:
        mask = np.zeros((size, size), np.uint8)
    image = np.stack([pre, flair, post], axis=-1) * head[..., None]
    image += np.abs(rng.normal(0.0, 3.0, image.shape))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def _tumor_run(slices: int, fraction: float, rng: np.random.Generator) -> range:
    """Contiguous, roughly central run of 1-based tumor slice numbers, at least one slice long."""
    count = min(slices, max(1, round(slices * fraction)))
    slack = slices - count
    start = slack // 2 + (int(rng.integers(-1, 2)) if slack >= 2 else 0)
    return range(start + 1, start + count + 1)


def _lesion_track(rng: np.random.Generator, run: range) -> dict[int, tuple[float, float, float]]:
    """Lesion (cx, cy, r) per slice: a slow linear drift and a radius peaking mid-run."""
    cx0, cy0 = rng.uniform(0.35, 0.65), rng.uniform(0.38, 0.62)
    dx, dy = rng.uniform(-0.08, 0.08, 2)
    peak = rng.uniform(0.09, 0.15)
    track = {}
    for k, n in enumerate(run):
        t = (k + 1) / (len(run) + 1)
        r = peak * (0.45 + 0.55 * np.sin(np.pi * t))
        track[n] = (float(cx0 + dx * t), float(cy0 + dy * t), float(r))
    return track


def _bad_files(
    kind: str, pid: str, n: int, size: int, rng: np.random.Generator
) -> dict[str, bytes]:
    """Bytes of the file(s) making up one injected bad item, keyed by name in the patient dir."""
    image, mask = make_slice(rng, size, (0.5, 0.5, 0.12))
    img, msk = f"{pid}_{n}.tif", f"{pid}_{n}_mask.tif"
    if kind == "corrupt":
        return {img: b"NOT A TIFF " + rng.bytes(256), msk: encode_tiff(mask)}
    if kind == "truncated":
        data = encode_tiff(image)
        return {img: data[: len(data) // 2], msk: encode_tiff(mask)}
    if kind == "missing_mask":
        return {img: encode_tiff(image)}
    if kind == "orphan_mask":
        return {msk: encode_tiff(mask)}
    if kind == "shape_mismatch":
        small = cv2.resize(mask, (size // 2, size // 2), interpolation=cv2.INTER_NEAREST)
        return {img: encode_tiff(image), msk: encode_tiff(small)}
    if kind == "nonbinary_mask":
        soft = mask.copy()
        soft[(mask == 0) & (cv2.dilate(mask, np.ones((3, 3), np.uint8)) > 0)] = 128
        return {img: encode_tiff(image), msk: encode_tiff(soft)}
    if kind == "uint16":
        return {img: encode_tiff(image.astype(np.uint16) * 257), msk: encode_tiff(mask)}
    if kind == "channels":
        alpha = np.full(image.shape[:2] + (1,), 255, np.uint8)
        return {img: encode_tiff(np.concatenate([image, alpha], axis=-1)), msk: encode_tiff(mask)}
    if kind == "bad_name":
        return {f"{pid}_x.tif": encode_tiff(image)}
    if kind == "wrong_size":
        big_image, big_mask = make_slice(rng, size * 2, (0.5, 0.5, 0.12))
        return {img: encode_tiff(big_image), msk: encode_tiff(big_mask)}
    raise ValueError(f"unknown bad kind {kind!r}; expected one of {BAD_KINDS}")


def _validate(spec: SynthSpec) -> None:
    """Raise ValueError for a spec that cannot be generated."""
    if spec.size < 16 or spec.patients < 1 or spec.slices < 1:
        raise ValueError(f"need size >= 16, patients >= 1, slices >= 1: {spec}")
    if not 0 <= spec.tumor_free_patients <= spec.patients:
        raise ValueError(f"tumor_free_patients must be in [0, patients]: {spec}")
    if not 0.0 <= spec.tumor_fraction <= 1.0:
        raise ValueError(f"tumor_fraction must be in [0, 1]: {spec}")
    unknown = [k for k in spec.bad if k not in BAD_KINDS]
    if unknown:
        raise ValueError(f"unknown bad kinds {unknown}; expected some of {BAD_KINDS}")


def make_export(root: Path, spec: SynthSpec) -> SynthReport:
    """Write a synthetic kaggle_3m-style export under root and report what was written."""
    _validate(spec)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pids: list[str] = []
    good = tumor = 0
    next_n: dict[str, int] = {}
    for i in range(spec.patients):
        index = spec.first_patient + i
        pid = patient_id(index, spec.patient_prefix)
        rng = np.random.default_rng([spec.seed, index])
        track = {} if i < spec.tumor_free_patients else _lesion_track(
            rng, _tumor_run(spec.slices, spec.tumor_fraction, rng))
        folder = root / pid
        folder.mkdir(exist_ok=True)
        for n in range(1, spec.slices + 1):
            image, mask = make_slice(rng, spec.size, track.get(n))
            (folder / f"{pid}_{n}.tif").write_bytes(encode_tiff(image))
            (folder / f"{pid}_{n}_mask.tif").write_bytes(encode_tiff(mask))
            tumor += n in track
        good += spec.slices
        pids.append(pid)
        next_n[pid] = spec.slices + 1
    bad: dict[str, str] = {}
    for j, kind in enumerate(spec.bad):
        pid = pids[j % len(pids)]
        rng = np.random.default_rng([spec.seed, spec.first_patient, 10_000 + j])
        for name, data in _bad_files(kind, pid, next_n[pid], spec.size, rng).items():
            (root / pid / name).write_bytes(data)
            bad[f"{pid}/{name}"] = kind
        next_n[pid] += 1
    log.info("synthetic export at %s: %d patients, %d slices (%d with tumor), %d bad files",
             root, len(pids), good, tumor, len(bad))
    return SynthReport(root=root, patients=pids, slices=good, tumor_slices=tumor, bad_files=bad)


def make_studies(root: Path, spec: SynthSpec) -> list[Path]:
    """Write synthetic incoming studies (one per patient: slices without masks) under root.

    Bad files of the spec (e.g. "corrupt", "wrong_size") land in the studies as they would in an
    export; returns the study folders.
    """
    report = make_export(root, spec)
    for mask in Path(report.root).rglob("*_mask.tif"):
        mask.unlink()
    return [Path(report.root) / pid for pid in report.patients]


def _export_files(src_root: Path) -> list[tuple[Path, str]]:
    """All files under src_root, sorted, paired with their archive member name."""
    files = sorted(p for p in Path(src_root).rglob("*") if p.is_file())
    return [(p, f"{ARCHIVE_TOP}/{p.relative_to(src_root).as_posix()}") for p in files]


def make_archive(src_root: Path, dest: Path) -> Path:
    """Pack an export into .zip/.tar/.tar.gz/.tar.xz (by dest suffix), members under kaggle_3m/."""
    dest = Path(dest)
    name = dest.name.lower()
    modes = {".tar.gz": "gz", ".tgz": "gz", ".tar.xz": "xz", ".tar": ""}
    members = _export_files(Path(src_root))
    dest.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".zip"):
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, arcname in members:
                info = zipfile.ZipInfo(arcname, date_time=(1995, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
        return dest
    comp = next((c for suffix, c in modes.items() if name.endswith(suffix)), None)
    if comp is None:
        raise ValueError(f"unsupported archive suffix: {dest.name}")
    with open(dest, "wb") as raw:
        outer = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if comp == "gz" else None
        with tarfile.open(fileobj=outer or raw, mode="w:xz" if comp == "xz" else "w") as tf:
            for path, arcname in members:
                data = path.read_bytes()
                info = tarfile.TarInfo(arcname)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tf.addfile(info, io.BytesIO(data))
        if outer is not None:
            outer.close()
    return dest
