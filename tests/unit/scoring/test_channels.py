"""brain_tumor.scoring.clinical.channels: series rules, grids, filling, stacking."""

from __future__ import annotations

import numpy as np
import pytest

from brain_tumor.scoring.clinical.channels import (
    SeriesRules,
    assemble_study,
    pick_volumes,
    resample,
    to_axial,
)
from brain_tumor.scoring.clinical.volume import Volume
from brain_tumor.scoring.contracts import StudyRejected
from brain_tumor.settings import load_settings


def _affine(spacing: tuple[float, float, float] = (3.0, 0.5, 0.5),
            origin: tuple[float, float, float] = (-64.0, -64.0, 10.0)) -> np.ndarray:
    between, row, col = spacing
    affine = np.diag([col, row, between, 1.0])
    affine[:3, 3] = origin
    return affine


def _values(shape: tuple[int, int, int], level: float) -> np.ndarray:
    """A head-like volume: a dim ring round a disk of `level` with a brighter spot, 0 outside."""
    z, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    radius = np.hypot(yy - h / 2, xx - w / 2) / min(h, w)
    plane = np.where(radius < 0.46, 0.3 * level, 0.0)
    plane[radius < 0.4] = level
    plane[np.hypot(yy - 0.4 * h, xx - 0.6 * w) < 0.08 * min(h, w)] = 2 * level
    return np.repeat(plane[None], z, axis=0).astype(np.uint16)


def _volume(description: str, level: float, shape: tuple[int, int, int] = (5, 256, 256),
            affine: np.ndarray | None = None, frame: str | None = "1.2.3") -> Volume:
    return Volume(_values(shape, level), _affine() if affine is None else affine, description,
                  [f"{description}-{k}" for k in range(shape[0])], frame_of_reference=frame,
                  slice_thickness=2.5, meta={"format": "dicom"})


@pytest.mark.parametrize(("description", "channel"), [
    ("AX FLAIR", "flair"), ("t2_tirm_tra_dark-fluid", "flair"), ("T1 FLAIR AX", "t1_pre"),
    ("AX T1 PRE", "t1_pre"), ("AX T1 POST+C", "t1_post"), ("T1 pre-contrast", "t1_pre"),
    ("T1_MPRAGE_GD", "t1_post"), ("sag mprage", "t1_pre"), ("T1 w/o contrast", "t1_pre"),
    ("AX T2 FSE", None), ("DWI b1000", None), ("FLAIR.nii.gz", "flair"),
    ("T1_post_gd.nii.gz", "t1_post"),
])
def test_default_rules_name_the_channels(description, channel):
    assert SeriesRules().channel(description) == channel


def test_rules_come_from_the_settings():
    settings = load_settings(env={}, series_flair_keywords="ir_fl, fluid",
                             series_t1_post_keywords="kontrast")
    rules = SeriesRules.from_settings(settings)
    assert rules.flair == ("ir_fl", "fluid")
    assert rules.channel("AX IR_FL") == "flair" and rules.channel("AX FLAIR") is None
    assert rules.channel("T1 KONTRAST") == "t1_post"


def test_three_sequences_are_stacked_in_the_model_order():
    vols = [_volume("AX FLAIR", 800), _volume("AX T1 PRE", 400), _volume("AX T1 POST+C", 1200)]
    study = assemble_study("s1", vols, SeriesRules())
    assert len(study.images) == 5 and study.slice_index == [1, 2, 3, 4, 5]
    assert all(img.shape == (256, 256, 3) and img.dtype == np.uint8 for img in study.images)
    assert study.source == [f"AX FLAIR-{k}" for k in range(5)]
    # the same pattern in every sequence maps to the same bytes, whatever its level
    img = study.images[2]
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    assert img[128, 60, 1] == 100  # the disk is the histogram peak
    assert study.summary == {"format": "dicom", "reduced_sequences": False,
                             "filled_channels": [], "spacing_mm": [3.0, 0.5, 0.5],
                             "voxel_volume_ml": 0.00075}
    assert study.meta["series"] == {"t1_pre": "AX T1 PRE", "flair": "AX FLAIR",
                                    "t1_post": "AX T1 POST+C"}
    assert study.meta["pixel_spacing_mm"] == [0.5, 0.5]
    assert study.meta["slice_positions_mm"] == [10.0, 13.0, 16.0, 19.0, 22.0]
    assert study.meta["transform"]["source_shape"] == [256, 256]


def test_distinct_sequences_land_in_their_own_channel():
    flair = _volume("AX FLAIR", 800)
    post = _volume("AX T1 POST+C", 1200)
    post.voxels[:, 2:12, 2:12] = 5000  # something only the post-contrast series shows
    study = assemble_study("s1", [post, flair], SeriesRules())
    img = study.images[0]
    assert img[5, 5, 2] == 255 and img[5, 5, 1] == 0 and img[5, 5, 0] == 0


def test_a_missing_t1_is_filled_from_flair_and_the_study_says_so():
    study = assemble_study("s1", [_volume("AX FLAIR", 800), _volume("AX T1 POST+C", 900)],
                           SeriesRules())
    assert study.summary["reduced_sequences"] is True
    assert study.summary["filled_channels"] == ["t1_pre"]
    assert all(np.array_equal(img[..., 0], img[..., 1]) for img in study.images)
    assert study.meta["series"]["t1_pre"] is None


def test_no_flair_rejects_the_study_naming_what_was_found():
    with pytest.raises(StudyRejected) as exc:
        assemble_study("s1", [_volume("AX T1 PRE", 400), _volume("AX T2", 300)], SeriesRules())
    assert exc.value.reason == "no_flair"
    assert "'AX T1 PRE'" in exc.value.detail and "'AX T2'" in exc.value.detail


def test_other_frames_of_reference_cannot_be_brought_together():
    vols = [_volume("AX FLAIR", 800), _volume("AX T1 PRE", 400, frame="9.9.9")]
    with pytest.raises(StudyRejected) as exc:
        assemble_study("s1", vols, SeriesRules())
    assert exc.value.reason == "frame_of_reference"
    assert "different frames of reference" in exc.value.detail


def test_volumes_that_do_not_overlap_are_rejected():
    far = _affine(origin=(-64.0, -64.0, 500.0))
    vols = [_volume("AX FLAIR", 800), _volume("AX T1 PRE", 400, affine=far)]
    with pytest.raises(StudyRejected) as exc:
        assemble_study("s1", vols, SeriesRules())
    assert exc.value.reason == "frame_of_reference" and "does not overlap" in exc.value.detail


def test_a_t1_on_another_grid_is_resampled_onto_the_flair_grid():
    flair = _volume("AX FLAIR", 800)
    # the same anatomy at half the in-plane resolution and the same slices
    coarse = _affine(spacing=(3.0, 1.0, 1.0), origin=(-63.75, -63.75, 10.0))
    t1 = Volume(_values((5, 128, 128), 400), coarse, "AX T1 PRE",
                [f"t1-{k}" for k in range(5)], frame_of_reference="1.2.3")
    values, inside = resample(t1, flair.affine, flair.voxels.shape)
    assert values.shape == (5, 256, 256) and inside > 0.95
    assert values[2, 128, 60] == pytest.approx(400.0)
    study = assemble_study("s1", [flair, t1], SeriesRules())
    img = study.images[2]
    assert img[128, 60, 0] == img[128, 60, 1] == 100  # the same tissue at the same place
    assert img[2, 2, 0] == img[2, 2, 1] == 0
    spot = [np.unravel_index(np.argmax(img[..., c]), img.shape[:2]) for c in (0, 1)]
    assert np.hypot(*np.subtract(*spot)) <= 2


def test_the_volume_with_most_slices_is_picked_then_the_axial_one():
    thin = _volume("AX FLAIR", 800, shape=(5, 64, 64))
    thick = _volume("AX FLAIR 3mm", 800, shape=(9, 64, 64))
    assert pick_volumes([thin, thick], SeriesRules())["flair"] is thick
    tilted = _affine()
    tilted[:3, :3] = tilted[:3, :3] @ np.array([[1, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]])
    oblique = _volume("OBL FLAIR", 800, shape=(9, 64, 64), affine=tilted)
    assert pick_volumes([oblique, thick], SeriesRules())["flair"] is thick


def test_a_sagittal_flair_is_reformatted_to_axial_without_interpolation():
    axial = _volume("AX FLAIR", 800, shape=(6, 20, 30))
    # the same voxels stored as sagittal slices: slice axis along x, columns along -y
    sag_affine = np.zeros((4, 4))
    sag_affine[:3, 0] = -axial.affine[:3, 1]  # columns run anterior
    sag_affine[:3, 1] = axial.affine[:3, 2]  # rows run superior
    sag_affine[:3, 2] = axial.affine[:3, 0]  # slices run left
    sag_affine[:3, 3] = axial.affine[:3, 3] + axial.affine[:3, 1] * 19
    sag_affine[3, 3] = 1
    sag_voxels = axial.voxels.transpose(2, 0, 1)[:, :, ::-1]  # (x, z, -y)
    sagittal = Volume(np.ascontiguousarray(sag_voxels), sag_affine, "SAG FLAIR",
                      [f"s{k}" for k in range(30)])
    back = to_axial(sagittal)
    assert np.array_equal(back.voxels, axial.voxels)
    assert np.allclose(back.affine, axial.affine)
    assert back.sources[0] == "SAG FLAIR#axial1" and len(back.sources) == 6
