"""DICOM studies in: the instances of one study (files, or zips of them) read into ``Volume``s.

One ``Volume`` per image series (grouped by Series Instance UID), its slices sorted along the
normal of Image Orientation (Patient) by Image Position (Patient), its affine (LPS millimetres)
built from position, orientation and Pixel Spacing, its values rescaled (Rescale Slope and
Intercept, per instance). Objects that are not images (structured reports, presentation
states, key objects, segmentations, a DICOMDIR, colour secondary captures...) are ignored and
listed in each volume's ``meta["ignored"]``; a series that is not one stack of parallel slices
of one size (a three-plane localizer) is ignored and listed the same way.

A study that cannot be read is rejected (``StudyRejected``) with one of these reasons:

* ``not_dicom``: a file (or zip member) that is not a DICOM object;
* ``truncated``: a file cut short (before or inside its pixel data);
* ``missing_handler``: pixel data in a compressed transfer syntax no installed handler decodes;
* ``unreadable``: pixel data a handler fails to decode, or a multi-frame image;
* ``mixed_patients``: objects of more than one Patient ID or Study Instance UID (the values are
  compared, never shown);
* ``slice_positions``: a series with slices missing their position or orientation, two slices
  at one position, or uneven spacing between slices;
* ``no_flair``: no image series left once the unusable ones are ignored (the detail lists why
  each was ignored, e.g. no valid Pixel Spacing);
* ``too_many_slices`` / ``too_large`` / ``unsafe_path`` / ``bad_name`` / ``not_a_file``: over the
  study's limits, or a zip member that may not be extracted.

Limits (``readers.StudyLimits``): each file or zip member at most ``file_bytes``; at most
``INSTANCES_PER_SLICE`` x ``study_slices`` files and ``BYTES_PER_PIXEL`` x ``study_pixels`` bytes
in all; each slice at most ``slice_pixels`` pixels and each series at most ``study_slices``
slices (by the headers, before any pixel data is decoded); the image series together at most
``SEQUENCES`` x ``study_pixels`` pixels.

Each volume's ``meta["headers"]`` holds its instances' headers in slice order, without pixel data:
the patient and study modules a DICOM Segmentation of the series copies
(``brain_tumor.scoring.clinical.masks_out``). Nothing identifying (patient name, ID, birth date,
accession number, institution, physicians) is read into any other part of a ``Volume``, logged or
put into a message.
"""

from __future__ import annotations

import logging
import shutil
import stat
import tempfile
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder

from brain_tumor.ingest.exports import member_problem
from brain_tumor.scoring.clinical.volume import Volume
from brain_tumor.scoring.contracts import StudyRejected
from brain_tumor.scoring.readers import StudyLimits

log = logging.getLogger(__name__)

#: a study may hold this many instance files per slice it may hold (its series together)
INSTANCES_PER_SLICE = 4
#: bytes of all files together per pixel the study may hold (16-bit pixels of its series)
BYTES_PER_PIXEL = 8
#: how many sequences' worth of study_pixels the image series may hold together
SEQUENCES = 3
#: orientation cosines equal within this; slice steps even within this fraction of the median
ORIENTATION_TOLERANCE = 1e-4
SPACING_TOLERANCE = 0.1
#: positions closer than this (mm) along the normal are one position
SAME_POSITION_MM = 1e-3
#: values larger than this (the pixel data) are left in the file when a header is read
_DEFER_BYTES = 4096
#: Modality values of objects that hold no image to score
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "SEG", "REG", "RTSTRUCT", "RTPLAN",
                                  "RTDOSE", "DOC", "FID", "RWV", "AU", "ECG"})
#: SOP classes of objects that hold no image to score (besides those Modality names)
NON_IMAGE_CLASSES = frozenset({
    "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.4.2",  # MR Spectroscopy
})
#: pixel data elements a kept header leaves out: Float, Double Float and (integer) Pixel Data
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
#: SOP classes of images: one without pixel data was cut short
IMAGE_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
})


@dataclass
class _Instance:
    """One DICOM object's header, and where it came from (``name`` is what messages show)."""

    name: str
    path: Path
    ds: Dataset


def _reject(reason: str, detail: str, names: list[str] | None = None) -> StudyRejected:
    return StudyRejected(reason, detail, names)


def _check_listing(files: list[tuple[str, Path]], limits: StudyLimits) -> None:
    """StudyRejected when the files are more, or bigger, than the limits allow."""
    most = INSTANCES_PER_SLICE * limits.study_slices
    if len(files) > most:
        raise _reject("too_many_slices", f"{len(files)} files, the most accepted is {most} "
                                         f"({INSTANCES_PER_SLICE} x max_study_slices); none "
                                         f"was read")
    sizes = [(n, p.stat().st_size) for n, p in files]
    big = [(n, s) for n, s in sizes if s > limits.file_bytes]
    if big:
        raise _reject("too_large", f"{len(big)} file(s) over the limit of {limits.file_bytes:,} "
                                   f"bytes (max_file_bytes), e.g. {big[0][0]} ({big[0][1]:,} "
                                   f"bytes); none was read", [n for n, _ in big])
    total, budget = sum(s for _, s in sizes), BYTES_PER_PIXEL * limits.study_pixels
    if total > budget:
        raise _reject("too_large", f"the {len(files)} files hold {total:,} bytes, over the limit "
                                   f"of {budget:,} ({BYTES_PER_PIXEL} x max_study_pixels)")


def _extract_zip(archive: Path, dest: Path, limits: StudyLimits) -> list[tuple[str, Path]]:
    """The regular members of a zip, extracted under dest as (member name, local path);
    StudyRejected for a member that may not be extracted or is over the limits."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            most = INSTANCES_PER_SLICE * limits.study_slices
            if len(infos) > most:
                raise _reject("too_many_slices", f"zip {archive.name} holds {len(infos)} "
                                                 f"members, the most accepted is {most}")
            budget = BYTES_PER_PIXEL * limits.study_pixels
            if sum(i.file_size for i in infos) > budget:
                raise _reject("too_large", f"zip {archive.name} expands to more than "
                                           f"{budget:,} bytes ({BYTES_PER_PIXEL} x "
                                           f"max_study_pixels)")
            out: list[tuple[str, Path]] = []
            for n, info in enumerate(infos):
                name = f"{archive.name}:{info.filename}"
                link = stat.S_ISLNK(info.external_attr >> 16)
                problem = member_problem(info.filename, not link, "symbolic link")
                if problem is not None:
                    raise _reject(problem[0], f"{name!r:.200}: {problem[1]}", [name])
                if info.file_size > limits.file_bytes:
                    raise _reject("too_large", f"{name!r:.200}: {info.file_size:,} bytes, over "
                                               f"the limit of {limits.file_bytes:,} bytes "
                                               f"(max_file_bytes)", [name])
                target = dest / f"{n:06d}"
                with zf.open(info) as src, target.open("wb") as fh:
                    data = src.read(limits.file_bytes + 1)  # the declared size may lie
                    if len(data) > limits.file_bytes:
                        raise _reject("too_large", f"{name!r:.200}: more than "
                                                   f"{limits.file_bytes:,} bytes (max_file_bytes)",
                                      [name])
                    fh.write(data)
                out.append((name, target))
            return out
    except (zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError) as exc:
        raise _reject("truncated", f"zip {archive.name} cannot be read: {exc}",
                      [archive.name]) from None


@contextmanager
def staged_files(paths: list[Path], limits: StudyLimits) -> Iterator[list[tuple[str, Path]]]:
    """(name, local path) of every file of a study, the members of its zips extracted to a
    temporary folder (removed afterwards); StudyRejected when over the limits."""
    tmp: Path | None = None
    try:
        files: list[tuple[str, Path]] = []
        for path in map(Path, paths):
            if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
                if tmp is None:
                    tmp = Path(tempfile.mkdtemp(prefix="dicom-"))
                dest = tmp / str(len(files))
                dest.mkdir()
                files += _extract_zip(path, dest, limits)
            else:
                files.append((path.name, path))
        _check_listing(files, limits)
        yield files
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def read_header(name: str, path: Path) -> Dataset:
    """A file's DICOM header (large values such as the pixel data listed, not read);
    StudyRejected ``not_dicom`` if it is not DICOM, ``truncated`` if it is cut short."""
    try:
        return _checked(name, pydicom.dcmread(path, defer_size=_DEFER_BYTES))
    except InvalidDicomError:
        pass  # no preamble: an old file may still be DICOM
    except (EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise _reject("truncated", f"{name}: cannot be read as DICOM ({type(exc).__name__})",
                      [name]) from None
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES, force=True)
    except Exception:  # anything pydicom raises on bytes that are not DICOM
        ds = None
    if ds is None or not str(ds.get("SOPClassUID", "")).startswith("1.2.840.10008."):
        raise _reject("not_dicom", f"{name}: not a DICOM object (no DICOM preamble, no SOP "
                                   f"Class UID)", [name])
    return _checked(name, ds)


def _checked(name: str, ds: Dataset) -> Dataset:
    """ds, unless it is an image that ends before its pixel data (StudyRejected ``truncated``)."""
    classes = {str(ds.get("SOPClassUID", "")),
               str(getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID", ""))}
    if "PixelData" not in ds and (classes & IMAGE_CLASSES or "Rows" in ds):
        raise _reject("truncated", f"{name}: an image whose file ends before its pixel data",
                      [name])
    return ds


def _non_image(ds: Dataset) -> str | None:
    """What a header holds when it is not an image to score (e.g. ``SR``), else None."""
    sop = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "")).upper()
    if modality in NON_IMAGE_MODALITIES:
        return modality
    if sop in NON_IMAGE_CLASSES:
        return pydicom.uid.UID(sop).name
    if "PixelData" not in ds:
        return modality or "object without pixel data"
    if "PixelData" in ds and int(ds.get("SamplesPerPixel", 1)) != 1:
        return f"{modality or 'image'} in colour"
    return None


def check_one_patient(instances: list[_Instance]) -> None:
    """StudyRejected ``mixed_patients`` when the objects hold more than one Patient ID or Study
    Instance UID; the values themselves never leave this function."""
    for keyword, what in (("PatientID", "Patient IDs"), ("StudyInstanceUID",
                                                         "Study Instance UIDs")):
        values = Counter(str(i.ds.get(keyword, "")) for i in instances)
        if len(values) > 1:
            raise _reject("mixed_patients", f"the study's {len(instances)} objects hold "
                                            f"{len(values)} different {what}: one study of one "
                                            f"patient is scored at a time")


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray | None:
    """A multi-valued numeric attribute as floats, None when missing or malformed."""
    value = ds.get(keyword)
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return array if array.shape == (count,) and np.isfinite(array).all() else None


def _number(ds: Dataset, keyword: str, default: float | None) -> float | None:
    value = ds.get(keyword)
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


@dataclass
class _Stack:
    """A series' instances sorted along their normal, and the geometry they share."""

    instances: list[_Instance]
    positions: np.ndarray  # N x 3 Image Position (Patient)
    row_dir: np.ndarray  # direction of a row (columns grow)
    col_dir: np.ndarray  # direction of a column (rows grow)
    pixel_spacing: np.ndarray  # between rows, between columns
    shape: tuple[int, int]


def _stack(series: str, instances: list[_Instance]) -> _Stack | str:
    """The series sorted into one stack, or why it is not one volume (a string: ignored);
    StudyRejected ``slice_positions`` for missing, duplicated or unevenly spaced slices."""
    names = [i.name for i in instances]
    iops = [_floats(i.ds, "ImageOrientationPatient", 6) for i in instances]
    ipps = [_floats(i.ds, "ImagePositionPatient", 3) for i in instances]
    missing = [n for n, o, p in zip(names, iops, ipps, strict=True) if o is None or p is None]
    if missing:
        raise _reject("slice_positions", f"series {series}: {len(missing)} of {len(names)} "
                                         f"slice(s) without Image Position/Orientation "
                                         f"(Patient), e.g. {missing[0]}", missing)
    shapes = {(int(i.ds.get("Rows", 0)), int(i.ds.get("Columns", 0))) for i in instances}
    iop = iops[0]
    if len(shapes) > 1 or any(np.abs(o - iop).max() > ORIENTATION_TOLERANCE
                              for o in iops):  # type: ignore[operator]
        return "slices of more than one orientation or size (e.g. a localizer)"
    spacing = _floats(instances[0].ds, "PixelSpacing", 2)
    if spacing is None or (spacing <= 0).any():
        return "no valid Pixel Spacing"
    row_dir, col_dir = iop[:3], iop[3:]  # type: ignore[index]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise _reject("slice_positions", f"series {series}: Image Orientation (Patient) is not "
                                         f"two orthogonal unit vectors")
    positions = np.asarray(ipps)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    instances = [instances[k] for k in order]
    steps = np.diff(along)
    same = [instances[k + 1].name for k in np.flatnonzero(steps < SAME_POSITION_MM)]
    if same:
        raise _reject("slice_positions", f"series {series}: {len(same)} slice(s) at the "
                                         f"position of another slice, e.g. {same[0]}", same)
    if len(steps) > 1:
        median = float(np.median(steps))
        uneven = np.flatnonzero(np.abs(steps - median) > SPACING_TOLERANCE * median)
        if uneven.size:
            k = int(uneven[0])
            raise _reject("slice_positions", (
                f"series {series}: uneven spacing between slices ({steps[k]:.3f} mm between "
                f"{instances[k].name} and {instances[k + 1].name}, {median:.3f} mm between most "
                f"others): a slice is missing or the series holds more than one stack"),
                [instances[k].name, instances[k + 1].name])
    return _Stack(instances, positions, np.asarray(row_dir), np.asarray(col_dir), spacing,
                  next(iter(shapes)))


def affine_of(stack: _Stack) -> np.ndarray:
    """4 x 4 affine (column, row, slice, 1) -> LPS millimetres of a sorted stack."""
    affine = np.eye(4)
    affine[:3, 0] = stack.row_dir * stack.pixel_spacing[1]
    affine[:3, 1] = stack.col_dir * stack.pixel_spacing[0]
    n = len(stack.positions)
    if n > 1:
        affine[:3, 2] = (stack.positions[-1] - stack.positions[0]) / (n - 1)
    else:
        ds = stack.instances[0].ds
        step = _number(ds, "SpacingBetweenSlices", None) or _number(ds, "SliceThickness", 1.0)
        affine[:3, 2] = np.cross(stack.row_dir, stack.col_dir) * float(step or 1.0)
    affine[:3, 3] = stack.positions[0]
    return affine


def _decode(instance: _Instance) -> np.ndarray:
    """One instance's rescaled pixels (float32, rows x columns); StudyRejected when its pixel
    data is cut short, has no handler, or cannot be decoded."""
    name = instance.name
    try:
        ds = pydicom.dcmread(instance.path)
    except (EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise _reject("truncated", f"{name}: cannot be read ({type(exc).__name__})",
                      [name]) from None
    if "PixelData" not in ds:
        raise _reject("truncated", f"{name}: the file ends before its pixel data", [name])
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        pixels = ds.pixel_array
    except NotImplementedError as exc:  # no decoder exists for the syntax
        raise _reject("missing_handler", f"{name}: pixel data in {_syntax_name(syntax)}, which "
                                         f"no pixel data handler decodes ({exc})", [name]) from None
    except (ValueError, RuntimeError, AttributeError, TypeError) as exc:
        if syntax is not None and not _decodable(syntax):
            raise _reject("missing_handler", (
                f"{name}: pixel data in {_syntax_name(syntax)}; no installed handler decodes it "
                f"(install one of the pydicom plugins for it)"), [name]) from None
        if "less than expected" in str(exc) or "fewer" in str(exc):
            raise _reject("truncated", f"{name}: pixel data cut short ({exc})", [name]) from None
        raise _reject("unreadable", f"{name}: pixel data cannot be decoded "
                                    f"({type(exc).__name__}: {str(exc)[:300]})", [name]) from None
    if pixels.ndim != 2:
        raise _reject("unreadable", f"{name}: pixel data of shape {pixels.shape}, expected one "
                                    f"grayscale frame", [name])
    slope = _number(ds, "RescaleSlope", 1.0) or 1.0
    intercept = _number(ds, "RescaleIntercept", 0.0) or 0.0
    values = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = values.max() + values.min() - values
    return values


def _syntax_name(syntax: Any) -> str:
    name = getattr(syntax, "name", "")
    return f"{name} ({syntax})" if name and name != str(syntax) else f"transfer syntax {syntax}"


def _decodable(syntax: Any) -> bool:
    """Whether an installed pixel data handler decodes the transfer syntax."""
    if not getattr(syntax, "is_compressed", False):
        return True
    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:
        return False


def _check_pixels(stacks: dict[str, _Stack], limits: StudyLimits) -> None:
    """StudyRejected when a slice, a series or the image series together are over the limits."""
    for series, stack in stacks.items():
        rows, cols = stack.shape
        if rows * cols > limits.slice_pixels:
            raise _reject("too_large", f"series {series}: slices of {rows}x{cols} pixels, over "
                                       f"the limit of {limits.slice_pixels:,} (max_slice_pixels)")
        if len(stack.instances) > limits.study_slices:
            raise _reject("too_many_slices", f"series {series}: {len(stack.instances)} slices, "
                                             f"the most accepted is {limits.study_slices} "
                                             f"(max_study_slices)")
    total = sum(len(s.instances) * s.shape[0] * s.shape[1] for s in stacks.values())
    if total > SEQUENCES * limits.study_pixels:
        raise _reject("too_large", f"the image series hold {total:,} pixels, over the limit of "
                                   f"{SEQUENCES * limits.study_pixels:,} ({SEQUENCES} x "
                                   f"max_study_pixels)")


def _series_label(ds: Dataset, uid: str) -> str:
    """How messages name a series: its number and description."""
    number = ds.get("SeriesNumber")
    description = _description(ds)
    return " ".join(x for x in (f"#{number}" if number not in (None, "") else "",
                                repr(description) if description else f"uid {uid}") if x)


def _series_number(ds: Dataset) -> int | None:
    number = _number(ds, "SeriesNumber", None)
    return None if number is None else int(number)


def _description(ds: Dataset) -> str:
    return str(ds.get("SeriesDescription", "") or ds.get("ProtocolName", "") or "").strip()


def _header(ds: Dataset) -> Dataset:
    """A copy of an instance's header without its pixel data, every value read from the file."""
    header = Dataset()
    for tag in ds.keys():
        if tag not in PIXEL_TAGS:
            header.add(ds[tag])
    return header


def _volume(uid: str, stack: _Stack, ignored: list[str]) -> Volume:
    """The Volume of a sorted stack: its pixels decoded and rescaled, its headers kept."""
    first = stack.instances[0].ds
    voxels = np.stack([_decode(i) for i in stack.instances])
    syntax = first.file_meta.get("TransferSyntaxUID") if hasattr(first, "file_meta") else None
    return Volume(
        voxels=voxels, affine=affine_of(stack), description=_description(first),
        sources=[str(i.ds.get("SOPInstanceUID", i.name)) for i in stack.instances],
        series_uid=uid or None,
        frame_of_reference=str(first.get("FrameOfReferenceUID", "")) or None,
        slice_thickness=_number(first, "SliceThickness", None),
        meta={"format": "dicom", "series_number": _series_number(first),
              "modality": str(first.get("Modality", "")),
              "transfer_syntax": getattr(syntax, "name", str(syntax or "")),
              "ignored": list(ignored),
              "headers": [_header(i.ds) for i in stack.instances]})


def read_instances(files: list[tuple[str, Path]], limits: StudyLimits) -> list[Volume]:
    """The volumes of a study's (already staged) files: see the module's docstring."""
    instances = [_Instance(name, path, read_header(name, path)) for name, path in files]
    if not instances:
        raise _reject("empty", "no DICOM files in the study")
    check_one_patient(instances)
    ignored: list[str] = []
    series: dict[str, list[_Instance]] = defaultdict(list)
    for inst in instances:
        what = _non_image(inst.ds)
        if what is not None:
            ignored.append(what)
        elif int(inst.ds.get("NumberOfFrames", 1) or 1) > 1:
            raise _reject("unreadable", f"{inst.name}: a multi-frame image "
                                        f"({int(inst.ds.NumberOfFrames)} frames); only images "
                                        f"of one frame an instance are read", [inst.name])
        else:
            series[str(inst.ds.get("SeriesInstanceUID", ""))].append(inst)
    stacks: dict[str, _Stack] = {}
    for uid, members in series.items():
        label = _series_label(members[0].ds, uid)
        result = _stack(label, members)
        if isinstance(result, str):
            ignored.append(f"series {label}: {result}")
        else:
            stacks[uid] = result
    counts = Counter(ignored)
    listing = [f"{what} (x{n})" if n > 1 else what for what, n in sorted(counts.items())]
    if listing:
        log.info("DICOM study: ignoring %d object(s) or series: %s", len(ignored),
                 "; ".join(listing))
    if not stacks:
        raise _reject("no_flair", "no usable image series, so no FLAIR; "
                                  + ("; ".join(listing) if listing else "no image objects"))
    _check_pixels(stacks, limits)
    order = sorted(stacks, key=lambda u: (_series_number(stacks[u].instances[0].ds) or 0, u))
    volumes = [_volume(uid, stacks[uid], listing) for uid in order]
    log.info("DICOM study: %d image series (%s)", len(volumes),
             ", ".join(f"{v.description!r}: {v.voxels.shape[0]} slices" for v in volumes))
    return volumes


def read_dicom_files(paths: list[Path], limits: StudyLimits) -> list[Volume]:
    """One Volume per image series of a study's DICOM files (or zips of them); StudyRejected
    with a reason of the module's docstring for a study that cannot be read."""
    with staged_files(list(paths), limits) as files:
        return read_instances(files, limits)
