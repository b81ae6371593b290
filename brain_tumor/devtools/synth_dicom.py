"""Synthetic DICOM studies: a synthetic TIFF study (``brain_tumor.devtools.synth``) written as
three MR series with realistic headers.

Each TIFF slice holds the three sequences in the ``kaggle_3m`` channel order (pre-contrast T1,
FLAIR, post-contrast T1); each becomes one MR Image Storage series ("AX T1 PRE", "AX FLAIR",
"AX T1 POST+C") of 16-bit MONOCHROME2 instances, one per slice. Stored values are
``16 * v + 64`` for an 8-bit value ``v``, with Rescale Slope 0.25 and Intercept -16, so the
rescaled value is ``4 * v``. Slices are axial, the first slice lowest (``z`` grows with the
slice number), at ``spacing`` millimetres from each other, with ``pixel_spacing`` (between rows,
between columns). The patient module carries the identifying values given as a
``PatientIdentity``: tests look for them in everything the pipeline writes.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from brain_tumor.ingest.imaging import decode_image
from brain_tumor.scoring.readers import is_slice_name

log = logging.getLogger(__name__)

#: (channel in the kaggle_3m order, series description, series number)
SERIES = ((1, "AX FLAIR", 3), (0, "AX T1 PRE", 4), (2, "AX T1 POST+C", 7))
RESCALE_SLOPE = 0.25
RESCALE_INTERCEPT = -16.0
#: SOP classes of the non-image objects ``non_image_object`` writes
NON_IMAGE_CLASSES = {
    "SR": ("1.2.840.10008.5.1.4.1.1.88.11", "SR"),  # Basic Text SR
    "PR": ("1.2.840.10008.5.1.4.1.1.11.1", "PR"),  # Grayscale Softcopy Presentation State
    "KO": ("1.2.840.10008.5.1.4.1.1.88.59", "KO"),  # Key Object Selection
    "SEG": ("1.2.840.10008.5.1.4.1.1.66.4", "SEG"),  # Segmentation
}


@dataclass(frozen=True)
class PatientIdentity:
    """The identifying values a synthetic study carries in its headers."""

    name: str = "DOE^JANE"
    patient_id: str = "PID-4711-XQ"
    birth_date: str = "19610203"
    accession: str = "ACC-99812"
    institution: str = "St Elsewhere Hospital"
    referring: str = "KILDARE^JAMES"

    def values(self) -> list[str]:
        """Every identifying value, as written in the headers."""
        return [self.name, self.patient_id, self.birth_date, self.accession, self.institution,
                self.referring]


@dataclass(frozen=True)
class DicomSpec:
    """How to write a study: geometry, identity, compression, and the seed of its UIDs."""

    identity: PatientIdentity = PatientIdentity()
    uid_seed: str = "synthetic-study"
    pixel_spacing: tuple[float, float] = (0.9, 0.8)  # between rows, between columns (mm)
    spacing: float = 3.3  # between slices (mm)
    thickness: float = 3.0  # as the header states (mm)
    origin: tuple[float, float, float] = (-120.0, -110.0, 40.0)
    compress: bool = False  # RLE Lossless instead of Explicit VR Little Endian


def tiff_slices(folder: Path) -> list[np.ndarray]:
    """The slices (H x W x 3 uint8, kaggle_3m channel order) of a TIFF study, by slice number."""
    files = [p for p in Path(folder).iterdir() if is_slice_name(p.name)]
    if not files:
        raise ValueError(f"no slice TIFFs (<name>_<N>.tif) in {folder}")
    files.sort(key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return [decode_image(p.read_bytes()) for p in files]


def _uid(spec: DicomSpec, *parts: object) -> str:
    """A UID derived from the spec's seed and parts: the same study gets the same UIDs."""
    return generate_uid(entropy_srcs=[spec.uid_seed, *map(str, parts)])


def study_uid(spec: DicomSpec) -> str:
    """The Study Instance UID a study written with spec carries."""
    return _uid(spec, "study")


def base_dataset(spec: DicomSpec, sop_class: str, sop_uid: str, modality: str) -> Dataset:
    """Patient, study and SOP common modules of one instance of the study."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ident = spec.identity
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = ident.name, ident.patient_id, \
        ident.birth_date
    ds.PatientSex = "F"
    ds.AccessionNumber = ident.accession
    ds.InstitutionName = ident.institution
    ds.ReferringPhysicianName = ident.referring
    ds.StudyInstanceUID = study_uid(spec)
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240105", "101500", "1"
    ds.Modality = modality
    ds.Manufacturer = "brain-tumor synth"
    return ds


def _slice_dataset(spec: DicomSpec, pixels: np.ndarray, description: str, number: int,
                   k: int) -> Dataset:
    """One MR instance: slice k (0 = lowest) of the series of this description."""
    ds = base_dataset(spec, MRImageStorage, _uid(spec, description, k), "MR")
    ds.SeriesInstanceUID = _uid(spec, description)
    ds.SeriesNumber, ds.InstanceNumber = number, k + 1
    ds.SeriesDescription = ds.ProtocolName = description
    ds.FrameOfReferenceUID = _uid(spec, "frame")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    x0, y0, z0 = spec.origin
    ds.ImagePositionPatient = [x0, y0, round(z0 + k * spec.spacing, 4)]
    ds.SliceLocation = ds.ImagePositionPatient[2]
    ds.PixelSpacing = list(spec.pixel_spacing)
    ds.SliceThickness = spec.thickness
    ds.SpacingBetweenSlices = spec.spacing
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = RESCALE_SLOPE, RESCALE_INTERCEPT, "US"
    stored = (pixels.astype(np.uint16) * 16 + 64).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    if spec.compress:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    return ds


def write_series(slices: list[np.ndarray], out: Path, spec: DicomSpec) -> dict[str, list[Path]]:
    """Write the three sequences of a study's slices as DICOM series under out; description ->
    files (``<series number>/<k>.dcm``, k from 1 at the lowest slice)."""
    written: dict[str, list[Path]] = {}
    for channel, description, number in SERIES:
        folder = Path(out) / f"{number}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for k, image in enumerate(slices):
            path = folder / f"{k + 1:04d}.dcm"
            _slice_dataset(spec, image[..., channel], description, number, k).save_as(
                path, enforce_file_format=True)
            paths.append(path)
        written[description] = paths
    log.info("wrote %d series of %d slices under %s", len(SERIES), len(slices), out)
    return written


def non_image_object(spec: DicomSpec, kind: str, rows: int = 8) -> Dataset:
    """A non-image object of the study (SR, PR, KO without pixels; SEG with a tiny frame)."""
    if kind not in NON_IMAGE_CLASSES:
        raise ValueError(f"kind must be one of {sorted(NON_IMAGE_CLASSES)}, received {kind!r}")
    sop_class, modality = NON_IMAGE_CLASSES[kind]
    ds = base_dataset(spec, sop_class, _uid(spec, kind, "instance"), modality)
    ds.SeriesInstanceUID = _uid(spec, kind, "series")
    ds.SeriesNumber, ds.InstanceNumber = 900, 1
    ds.SeriesDescription = f"synthetic {kind}"
    if kind == "SEG":
        ds.FrameOfReferenceUID = _uid(spec, "frame")
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = rows
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.NumberOfFrames = 1
        ds.PixelData = np.zeros((rows, rows), np.uint8).tobytes()
    return ds


def write_study(tiff_folder: Path, out: Path, spec: DicomSpec | None = None,
                zip_to: Path | None = None) -> Path:
    """Write a TIFF study as DICOM series under out (or, with zip_to, as a zip of them there);
    returns the folder or the zip."""
    spec = spec or DicomSpec()
    write_series(tiff_slices(Path(tiff_folder)), Path(out), spec)
    if zip_to is None:
        return Path(out)
    return zip_folder(Path(out), Path(zip_to))


def zip_folder(folder: Path, dest: Path) -> Path:
    """Pack every file under folder into the zip dest (relative paths as member names)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder).as_posix())
    return dest
