"""Sequences to the model's three channels: pick, align, map intensities, stack.

**Which sequence is which.** ``SeriesRules`` match keywords (case-insensitive substrings) in a
volume's description (series description or protocol name for DICOM, file name for NIfTI):

* FLAIR: ``flair``, ``dark fluid``, ``dark-fluid``, ``darkfluid``, unless a T1 keyword is present
  too (a "T1 FLAIR" is T1-weighted and is read as T1);
* post-contrast T1: ``post``, ``+c``, ``gd``, ``gad``, ``contrast``, ``t1c``, unless a
  pre-contrast keyword (``pre``, ``w/o``, ``without``, ``non-contrast``, ``native``) is present;
* pre-contrast T1: ``t1``, ``mprage``, ``spgr``, ``bravo`` (and no post-contrast keyword, or a
  pre-contrast one too);
* anything else (T2, DWI, localizers...) is not used.

The lists are settings (``series_flair_keywords``, ``series_t1_post_keywords``,
``series_t1_keywords``, ``series_pre_contrast_keywords``: comma lists). When several volumes
match one channel the one with the most slices is taken, then the most nearly axial one, then
(for the T1 channels) one in the FLAIR's frame of reference; the description decides a
remaining tie.

**Grid.** The FLAIR sets the grid. It is first brought to the patient-aligned axial orientation
closest to its own by permuting and flipping its axes, without interpolation: columns run
toward the patient's left, rows toward posterior, slices from inferior to superior (the way
axial DICOM images are displayed). A sagittal or coronal acquisition thereby becomes axial
slices (a tilted one keeps its tilt). Slices whose two pixel spacings then differ by more than
1 % are resampled along the coarser direction to the finer spacing (linear), so pixels are
square, as in the training slices. The T1 volumes are resampled onto that grid (linear, via
their affines; ``scipy.ndimage.map_coordinates``) unless they already share it. Two volumes
whose Frame of Reference UIDs differ, or that do not overlap at all, cannot be brought together
and the study is rejected (``frame_of_reference``).

**Missing sequences.** A missing T1 or post-contrast T1 is filled with the FLAIR, as the
``kaggle_3m`` data did for patients missing a sequence; the study's summary then says
``reduced_sequences: true`` and which channel was filled. No FLAIR rejects the study
(``no_flair``), and so does a DICOM FLAIR series without a Frame of Reference UID
(``no_frame_of_reference``): its tumor mask could not be written as a segmentation of it.

**Intensities.** Each channel volume is then mapped the way the training slices were made
(``brain_tumor.scoring.clinical.intensity``) and the three are stacked per slice in the model's
channel order: pre-contrast T1, FLAIR, post-contrast T1.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from brain_tumor.scoring.clinical.intensity import map_volume
from brain_tumor.scoring.clinical.masks_out import acquired_grid_meta
from brain_tumor.scoring.clinical.volume import Volume
from brain_tumor.scoring.contracts import Study, StudyRejected
from brain_tumor.settings import Settings

log = logging.getLogger(__name__)

#: the model's channels, in the order of the slices' RGB planes
CHANNELS = ("t1_pre", "flair", "t1_post")
SAME_GRID_MM = 1e-3  # affines this close (millimetres) are one grid
SQUARE_TOLERANCE = 0.01  # pixel spacings within this fraction of each other are square


def _keywords(text: str) -> tuple[str, ...]:
    """A comma list as lower-case keywords (blank entries dropped)."""
    return tuple(k.strip().lower() for k in text.split(",") if k.strip())


@dataclass(frozen=True)
class SeriesRules:
    """Keywords that make a volume's description FLAIR, post-contrast T1 or pre-contrast T1."""

    flair: tuple[str, ...] = ("flair", "dark fluid", "dark-fluid", "darkfluid")
    t1_post: tuple[str, ...] = ("post", "+c", "gd", "gad", "contrast", "t1c")
    t1: tuple[str, ...] = ("t1", "mprage", "spgr", "bravo")
    pre_contrast: tuple[str, ...] = ("pre", "w/o", "without", "non-contrast", "native")

    @classmethod
    def from_settings(cls, settings: Settings) -> SeriesRules:
        """The rules of the series_*_keywords settings."""
        return cls(_keywords(settings.series_flair_keywords),
                   _keywords(settings.series_t1_post_keywords),
                   _keywords(settings.series_t1_keywords),
                   _keywords(settings.series_pre_contrast_keywords))

    def channel(self, description: str) -> str | None:
        """The channel a description names (``t1_pre``, ``flair``, ``t1_post``) or None."""
        text = description.lower()

        def has(words: tuple[str, ...]) -> bool:
            return any(w in text for w in words)

        t1, post, pre = has(self.t1), has(self.t1_post), has(self.pre_contrast)
        if has(self.flair) and not t1:
            return "flair"
        if post and not pre:
            return "t1_post"
        if t1:
            return "t1_pre"
        return None


def axialness(vol: Volume) -> float:
    """How nearly the slices are axial: |cosine| between slice normal and the patient's z."""
    return float(abs(vol.normal[2]))


def pick_volumes(volumes: list[Volume], rules: SeriesRules) -> dict[str, Volume | None]:
    """Channel -> the volume chosen for it (None when no volume matches)."""
    matched: dict[str, list[Volume]] = {c: [] for c in CHANNELS}
    for vol in volumes:
        channel = rules.channel(vol.description)
        if channel is not None:
            matched[channel].append(vol)

    def best(candidates: list[Volume], frame: str | None) -> Volume | None:
        def key(v: Volume) -> tuple[int, float, bool, str, str]:
            return (-v.voxels.shape[0], -round(axialness(v), 3), v.frame_of_reference != frame,
                    v.description, v.series_uid or "")

        return min(candidates, key=key, default=None)

    flair = best(matched["flair"], None)
    frame = flair.frame_of_reference if flair is not None else None
    return {c: flair if c == "flair" else best(matched[c], frame) for c in CHANNELS}


def to_axial(vol: Volume) -> Volume:
    """The volume with its axes permuted and flipped to the closest patient-aligned axial
    orientation (columns toward +x, rows toward +y, slices toward +z); no interpolation."""
    axes = vol.affine[:3, :3] / np.linalg.norm(vol.affine[:3, :3], axis=0)
    # perm[t] = the affine column (0 column, 1 row, 2 slice) that runs along patient axis t
    perm = max(itertools.permutations(range(3)),
               key=lambda p: sum(abs(axes[t, p[t]]) for t in range(3)))
    if perm == (0, 1, 2) and all(axes[t, t] > 0 for t in range(3)):
        return vol
    # array axis of affine column c is 2 - c; the new array is (slice, row, column) = (z, y, x)
    data = vol.voxels.transpose(2 - perm[2], 2 - perm[1], 2 - perm[0])
    affine = np.eye(4)
    origin = vol.affine[:3, 3].copy()
    for t in range(3):
        column = vol.affine[:3, perm[t]]
        if axes[t, perm[t]] < 0:
            data = np.flip(data, axis=2 - t)
            origin = origin + column * (vol.voxels.shape[2 - perm[t]] - 1)
            column = -column
        affine[:3, t] = column
    affine[:3, 3] = origin
    if perm[2] == 2:
        sources = list(vol.sources) if axes[2, 2] > 0 else list(reversed(vol.sources))
        thickness = vol.slice_thickness
    else:
        first = vol.sources[0]
        label = first.rsplit("#", 1)[0] if "#" in first else vol.series_uid or vol.description
        sources = [f"{label}#axial{k + 1}" for k in range(data.shape[0])]
        thickness = None
    log.info("volume %r reoriented to axial (axes %s)", vol.description, perm)
    return Volume(np.ascontiguousarray(data), affine, vol.description, sources, vol.series_uid,
                  vol.frame_of_reference, thickness, dict(vol.meta))


def resample(source: Volume, affine: np.ndarray,
             shape: tuple[int, int, int]) -> tuple[np.ndarray, float]:
    """source's values on the grid of (affine, Z x H x W shape), linear, 0 outside; and the
    fraction of that grid that lies inside the source."""
    from scipy.ndimage import map_coordinates

    to_source = np.linalg.inv(source.affine) @ affine
    z, h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty(shape, np.float32)
    inside = 0
    limits = [n - 0.5 for n in source.voxels.shape[::-1]]  # columns, rows, slices
    for k in range(z):
        index = (to_source[:3, 0, None, None] * cols + to_source[:3, 1, None, None] * rows
                 + to_source[:3, 2, None, None] * k + to_source[:3, 3, None, None])
        coords = np.stack([index[2], index[1], index[0]])
        map_coordinates(source.voxels, coords, output=out[k], order=1, mode="constant", cval=0.0)
        inside += int(np.count_nonzero(np.all(
            [(index[i] >= -0.5) & (index[i] <= limits[i]) for i in range(3)], axis=0)))
    return out, inside / float(z * h * w)


def square_pixels(vol: Volume) -> Volume:
    """The volume with its coarser in-plane spacing resampled to the finer one (linear) when
    the two differ by more than SQUARE_TOLERANCE; else the volume itself."""
    _, row, col = vol.spacing
    if abs(row - col) <= SQUARE_TOLERANCE * min(row, col):
        return vol
    fine = min(row, col)
    z, h, w = vol.voxels.shape
    affine = vol.affine.copy()
    affine[:3, 0] *= fine / col
    affine[:3, 1] *= fine / row
    shape = (z, int(np.floor((h - 1) * row / fine + 1e-6)) + 1,
             int(np.floor((w - 1) * col / fine + 1e-6)) + 1)
    data, _ = resample(vol, affine, shape)
    log.info("volume %r resampled to square %.3g mm pixels", vol.description, fine)
    return Volume(data, affine, vol.description, list(vol.sources), vol.series_uid,
                  vol.frame_of_reference, vol.slice_thickness, dict(vol.meta))


def _same_grid(a: Volume, affine: np.ndarray, shape: tuple[int, ...]) -> bool:
    return a.voxels.shape == shape and bool(np.allclose(a.affine, affine, atol=SAME_GRID_MM))


def onto_grid(channel: str, vol: Volume, flair: Volume) -> np.ndarray:
    """A T1 volume's values on the FLAIR grid; StudyRejected (``frame_of_reference``) when the
    two cannot be brought together."""
    if (vol.frame_of_reference and flair.frame_of_reference
            and vol.frame_of_reference != flair.frame_of_reference):
        raise StudyRejected("frame_of_reference", (
            f"the {channel} series {vol.description!r} and the FLAIR series "
            f"{flair.description!r} have different frames of reference: their positions cannot "
            f"be related"))
    if _same_grid(vol, flair.affine, flair.voxels.shape):
        return vol.voxels
    data, inside = resample(vol, flair.affine, flair.voxels.shape)  # type: ignore[arg-type]
    if inside == 0.0:
        raise StudyRejected("frame_of_reference", (
            f"the {channel} series {vol.description!r} does not overlap the FLAIR series "
            f"{flair.description!r} anywhere"))
    log.info("%s series %r resampled onto the FLAIR grid (%.0f%% covered)", channel,
             vol.description, 100 * inside)
    return data


def _mm(value: float) -> float:
    """A length rounded to a micrometre (headers hold float32 values)."""
    return round(float(value), 6)


def grid_meta(flair: Volume) -> dict[str, Any]:
    """Geometry facts of the FLAIR grid the slices were made on (JSON-ready)."""
    between, row, col = flair.spacing
    positions = [float(np.dot(flair.affine[:3, 3] + k * flair.affine[:3, 2], flair.normal))
                 for k in range(flair.voxels.shape[0])]
    orientation = [*(flair.affine[:3, 0] / col), *(flair.affine[:3, 1] / row)]
    return {"pixel_spacing_mm": [_mm(row), _mm(col)], "slice_spacing_mm": _mm(between),
            "slice_thickness_mm": (None if flair.slice_thickness is None
                                   else _mm(flair.slice_thickness)),
            "slice_positions_mm": [_mm(p) for p in positions],
            "orientation": [_mm(v) for v in orientation],
            "affine": [[float(v) for v in r] for r in flair.affine],
            "source_shape": list(flair.voxels.shape)}


def assemble_study(study_id: str, volumes: list[Volume], rules: SeriesRules,
                   source_format: str | None = None) -> Study:
    """The study's slices in the model's channel order, from its sequence volumes.

    ``meta`` holds the grid facts (``grid_meta``), the FLAIR's acquired grid before any
    reformat (``acquired_affine``, ``acquired_shape``) and, for DICOM, its instances' headers
    (``flair_headers``, identifying: never logged or written but into a DICOM SEG); ``meta`` is
    never written out as a whole.

    StudyRejected: ``no_flair`` (no volume matches the FLAIR keywords),
    ``no_frame_of_reference`` (a DICOM FLAIR series without a Frame of Reference UID),
    ``frame_of_reference`` (a T1 volume that cannot be brought onto the FLAIR grid),
    ``intensity_range`` (a volume the intensity rule cannot map).
    """
    fmt = source_format or (str(volumes[0].meta.get("format", "clinical")) if volumes
                            else "clinical")
    picked = pick_volumes(volumes, rules)
    flair = picked["flair"]
    if flair is None:
        found = ", ".join(repr(v.description) for v in volumes[:12]) or "none"
        raise StudyRejected("no_flair", (
            f"no series matches the FLAIR keywords {list(rules.flair)}; {len(volumes)} image "
            f"series found: {found}"))
    if fmt == "dicom" and not flair.frame_of_reference:
        number = flair.meta.get("series_number")
        raise StudyRejected("no_frame_of_reference", (
            f"the FLAIR series {'#' + str(number) + ' ' if number is not None else ''}"
            f"{flair.description!r} has no Frame of Reference UID: a segmentation of it could "
            f"not be placed in the patient's space"))
    acquired = {**acquired_grid_meta(flair.affine, flair.voxels.shape),
                "flair_headers": flair.meta.get("headers")}
    flair = square_pixels(to_axial(flair))
    on_grid: dict[str, np.ndarray] = {"flair": flair.voxels}
    for channel in ("t1_pre", "t1_post"):
        vol = picked[channel]
        if vol is not None:
            on_grid[channel] = onto_grid(channel, vol, flair)
    mapped: dict[str, np.ndarray] = {}
    transform = None
    for channel, values in on_grid.items():
        try:
            mapped[channel], grid, _ = map_volume(values)
        except ValueError as exc:
            raise StudyRejected("intensity_range", f"the {channel} series "
                                                   f"{picked[channel].description!r}: {exc}"
                                ) from None  # type: ignore[union-attr]
        transform = grid if channel == "flair" else transform
    filled = [c for c in CHANNELS if c not in mapped]
    for channel in filled:
        mapped[channel] = mapped["flair"]
    stacked = np.stack([mapped[c] for c in CHANNELS], axis=-1)
    images = [np.ascontiguousarray(s) for s in stacked]
    between, row, col = (_mm(v) for v in flair.spacing)
    voxel_ml = round(between * row * col / 1000.0, 9)
    meta = {"format": fmt, **grid_meta(flair),
            "transform": transform.to_dict(),  # type: ignore[union-attr]
            "series": {c: picked[c].description if picked[c] is not None else None
                       for c in CHANNELS}, **acquired}
    summary = {"format": fmt, "reduced_sequences": bool(filled), "filled_channels": filled,
               "spacing_mm": [between, row, col], "voxel_volume_ml": voxel_ml}
    if filled:
        log.info("study %s: %s filled from FLAIR", study_id, ", ".join(filled))
    return Study(study_id, images, list(range(1, len(images) + 1)), list(flair.sources),
                 meta=meta, summary=summary)
