"""The out-of-distribution check on synthetic studies: bounds from validation, foreign kinds
flagged, in-distribution studies not, drift statistics."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from brain_tumor.devtools.synth import make_slice
from brain_tumor.devtools.synth_foreign import FOREIGN_KINDS, foreign_slices
from brain_tumor.ml.normalize import NONE, VOLUME_PERCENTILE
from brain_tumor.scoring import ood
from brain_tumor.scoring.engines import study_input

SIZE = 64


def study(seed: int, slices: int = 12) -> list[np.ndarray]:
    """A synthetic in-distribution study (half its slices with a lesion)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(slices):
        lesion = (0.5, 0.5, 0.1) if k % 2 else None
        out.append(make_slice(rng, SIZE, lesion)[0])
    return out


def stats(slices: list[np.ndarray], norm: str = NONE) -> np.ndarray:
    """Input statistics of a study's model input (resized to 32, mapped with ``norm``)."""
    return ood.input_statistics(study_input(slices, 32, norm))


def fitted(norm: str) -> ood.Reference:
    """A reference on synthetic studies' model input mapped with ``norm``."""
    train = np.concatenate([stats(study(s), norm) for s in range(20)])
    val = np.concatenate([stats(study(s), norm) for s in range(100, 120)])
    return ood.fit_reference({"input": train}, {"input": val}, slice_rate=0.01,
                             validation_prob=np.linspace(0, 1, len(val)), input_norm=norm)


@pytest.fixture(scope="module")
def reference() -> ood.Reference:
    return fitted(NONE)


@pytest.fixture(scope="module")
def normalized_reference() -> ood.Reference:
    return fitted(VOLUME_PERCENTILE)


def test_statistics_have_one_column_per_name() -> None:
    values = stats(study(0, 3))
    assert values.shape == (3, len(ood.INPUT_STAT_NAMES))
    assert np.all(np.isfinite(values))
    fg = ood.INPUT_STAT_NAMES.index("foreground_fraction")
    assert 0.2 < values[0, fg] < 0.9  # the synthetic head fills part of the frame


def test_bound_is_the_validation_quantile(reference: ood.Reference) -> None:
    det = reference.detector("input")
    val = np.concatenate([stats(study(s)) for s in range(100, 120)])
    dist = det.distance(val)
    assert det.bound == pytest.approx(np.quantile(dist, 0.99))
    assert np.sum(dist > det.bound) <= np.ceil(0.01 * len(dist))
    # a bound set on other slices differs: the bound follows the slices it is given
    other = ood.fit_input_detector(np.concatenate([stats(study(s)) for s in range(20)]))
    assert ood.set_bound(other, stats(study(500)) * 1.5, 0.01) != pytest.approx(det.bound)


@pytest.mark.parametrize("kind", FOREIGN_KINDS)
def test_each_foreign_kind_is_flagged(reference: ood.Reference, kind: str) -> None:
    for seed in range(3):
        result = ood.check(reference, {"input": stats(foreign_slices(kind, study(200 + seed)))})
        assert result.flagged, (kind, result.reasons, result.slice_score)
        assert result.slice_flag.mean() >= 0.95
        reason = result.reasons[0]
        assert reason["statistic"] == "input_distance" and reason["value"] > reason["bound"]


@pytest.mark.parametrize("kind", FOREIGN_KINDS)
def test_each_foreign_kind_is_flagged_after_normalization(normalized_reference: ood.Reference,
                                                          kind: str) -> None:
    for seed in range(3):
        values = stats(foreign_slices(kind, study(200 + seed)), VOLUME_PERCENTILE)
        result = ood.check(normalized_reference, {"input": values})
        assert result.flagged, (kind, result.reasons, result.slice_score)
        assert result.slice_flag.mean() >= 0.95


def _saturated(slices: list[np.ndarray]) -> list[np.ndarray]:
    """A window far too narrow: the head's values (above a low level) saturated at 255."""
    out = []
    for img in slices:
        head = img.max(axis=-1, keepdims=True) >= 10
        out.append(np.where(head, np.clip(img.astype(np.int32) * 6, 0, 255), img)
                   .astype(np.uint8))
    return out


def _dark_band(slices: list[np.ndarray]) -> list[np.ndarray]:
    """A window far too wide: the head's values squeezed into a narrow dark band (10..30)."""
    return [np.where(img > 0, 10 + img // 13, 0).astype(np.uint8) for img in slices]


@pytest.mark.parametrize("norm", [NONE, VOLUME_PERCENTILE])
@pytest.mark.parametrize("window", [_saturated, _dark_band])
def test_grossly_mis_windowed_studies_are_flagged(reference: ood.Reference,
                                                  normalized_reference: ood.Reference,
                                                  norm: str, window) -> None:
    ref = normalized_reference if norm == VOLUME_PERCENTILE else reference
    for seed in range(3):
        odd = window(study(400 + seed))
        result = ood.check(ref, {"input": stats(odd, norm)})
        assert result.flagged, (window.__name__, norm, result.slice_score)
        assert result.slice_flag.mean() >= 0.95


def test_normalized_in_distribution_studies_are_not_flagged(
        normalized_reference: ood.Reference) -> None:
    results = [ood.check(normalized_reference, {"input": stats(study(300 + s),
                                                               VOLUME_PERCENTILE)})
               for s in range(8)]
    assert not any(r.flagged for r in results)
    assert np.mean(np.concatenate([r.slice_flag for r in results])) <= 0.05


def test_texture_statistics_see_stripes_blur_and_turns() -> None:
    base = stats(study(9, 4))
    column = {n: i for i, n in enumerate(ood.INPUT_STAT_NAMES)}
    striped = stats(foreign_slices("artefact", study(9, 4)))
    assert np.all(striped[:, column["highfreq_x"]] > base[:, column["highfreq_x"]])
    assert np.all(striped[:, column["stripe_x"]] > base[:, column["stripe_x"]])
    blurred = stats(foreign_slices("blur", study(9, 4)))
    assert np.all(blurred[:, column["sharpness_x"]] < 0.6 * base[:, column["sharpness_x"]])
    turned = stats(foreign_slices("rotated", study(9, 4)))
    # the synthetic head is wider than tall; turned, it is taller than wide
    assert np.all(base[:, column["head_aspect"]] > 0)
    assert np.all(turned[:, column["head_aspect"]] < 0)
    cropped = stats(foreign_slices("cropped", study(9, 4)))
    assert np.all(cropped[:, column["head_border"]] > base[:, column["head_border"]])


def test_foreign_kinds_keep_the_slice_shape_and_zero_one_channel() -> None:
    rng = np.random.default_rng(3)
    wide = [make_slice(rng, 48, None)[0][:, :] for _ in range(2)]
    wide = [np.ascontiguousarray(np.pad(img, ((0, 0), (8, 8), (0, 0)))) for img in wide]
    for kind in FOREIGN_KINDS:
        out = foreign_slices(kind, wide, seed=1)
        assert [o.shape for o in out] == [w.shape for w in wide], kind
        assert all(o.dtype == np.uint8 for o in out), kind
    zeroed = np.stack(foreign_slices("channel_zeroed", wide, seed=1))
    empty = [c for c in range(3) if not zeroed[..., c].any()]
    assert len(empty) == 1
    kept = [c for c in range(3) if c not in empty]
    assert np.array_equal(zeroed[..., kept], np.stack(wide)[..., kept])
    with pytest.raises(ValueError, match="received 'mri'"):
        foreign_slices("mri", wide)


def test_the_reference_states_the_input_mapping(normalized_reference: ood.Reference) -> None:
    back = ood.Reference.from_bytes(normalized_reference.to_bytes())
    assert back.input_norm == VOLUME_PERCENTILE and back.judges_inputs()
    det = normalized_reference.detector("input")
    older = ood.Reference([ood.Detector("input", det.mean[:40], det.whiten[:40, :40], 1.0)],
                          0.01, 0.5)
    assert not ood.Reference.from_bytes(older.to_bytes()).judges_inputs()


def test_in_distribution_studies_are_not_flagged(reference: ood.Reference) -> None:
    results = [ood.check(reference, {"input": stats(study(300 + s))}) for s in range(8)]
    assert not any(r.flagged for r in results)
    assert np.mean(np.concatenate([r.slice_flag for r in results])) <= 0.05
    summary = results[0].summary()
    assert summary["out_of_distribution"] is False and summary["ood_reasons"] == []


def test_reference_round_trips_through_bytes(reference: ood.Reference) -> None:
    back = ood.Reference.from_bytes(reference.to_bytes())
    values = stats(foreign_slices("noise", study(7)))
    assert np.allclose(back.detector("input").distance(values),
                       reference.detector("input").distance(values))
    assert back.detector("input").bound == reference.detector("input").bound
    assert set(back.validation) == {"input_distance", "study_score", "probability"}


def test_feature_detector_whitens_the_training_features() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 40))
    det = ood.fit_feature_detector(train, max_components=6)
    projected = (train - det.mean) @ det.whiten
    assert np.allclose(np.cov(projected, rowvar=False), np.eye(6), atol=1e-6)
    far = train[:5] + 50 * np.abs(train).max()
    assert np.all(det.distance(far) > det.distance(train[:5]).max())


def test_drift_statistics() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=2000)
    assert ood.psi(ref, rng.normal(size=500)) < 0.1
    assert ood.psi(ref, rng.normal(1.5, 1, size=500)) > ood.PSI_BOUND
    assert ood.ks_statistic(ref, ref) == 0.0
    assert ood.ks_statistic(ref, ref + 10) == 1.0


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="N x S x S x 3"):
        ood.input_statistics(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="slice_rate"):
        ood.set_bound(ood.fit_input_detector(np.random.default_rng(0).normal(size=(10, 3))),
                      np.zeros((3, 3)), 1.5)
    with pytest.raises(ValueError, match="'input' \\(required\\)"):
        ood.fit_reference({"pixels": np.zeros((3, 3))}, {})


# --- the study detector: one point per study (medians of its slices' statistics) ---
DIM = 12


def gaussian_studies(count: int, seed: int, slices: int = 20,
                     offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Slices (N x DIM) of ``count`` studies: a small per-study offset plus large slice noise;
    ``offset`` shifts every statistic of every study by that many slice spreads."""
    rng = np.random.default_rng(seed)
    rows, ids = [], []
    for s in range(count):
        centre = rng.normal(0.0, 0.1, DIM) + offset
        rows.append(centre + rng.normal(0.0, 1.0, (slices, DIM)))
        ids += [f"s{seed}-{s}"] * slices
    return np.concatenate(rows), np.array(ids)


@pytest.fixture(scope="module")
def study_reference() -> ood.Reference:
    train, train_ids = gaussian_studies(40, 1)
    val, val_ids = gaussian_studies(10, 2)
    return ood.fit_reference({"input": train}, {"input": val}, slice_rate=0.01,
                             study_share=0.6, study_rate=0.05, train_patients=train_ids,
                             validation_patients=val_ids)


def test_a_shifted_study_is_flagged_by_its_study_distance(study_reference) -> None:
    shifted, _ = gaussian_studies(1, 7, offset=0.6)  # small against one slice's spread

    result = ood.check(study_reference, {"input": shifted})

    assert result.slice_flag.mean() < study_reference.study_share  # the slice rule misses it
    assert [r["statistic"] for r in result.reasons] == ["study_distance"]
    reason = result.reasons[0]
    assert reason["value"] > reason["bound"] == pytest.approx(study_reference.study.bound, 1e-4)
    assert result.flagged and result.study_distance == pytest.approx(reason["value"], 1e-4)


def test_in_distribution_studies_pass_the_study_bound(study_reference) -> None:
    fresh, ids = gaussian_studies(20, 8)
    flagged = [ood.check(study_reference, {"input": fresh[ids == p]}).flagged
               for p in np.unique(ids)]
    assert sum(flagged) <= 2
    assert all(ood.check(study_reference, {"input": fresh[ids == p]}).study_distance
               < study_reference.study.bound * 1.5 for p in np.unique(ids))


def test_the_study_bound_is_a_quantile_of_held_out_studies(study_reference) -> None:
    held_out = study_reference.validation["study_distance"]
    assert len(held_out) == 50 and study_reference.facts["train_studies"] == 40
    assert study_reference.study.bound == pytest.approx(np.quantile(held_out, 0.95))
    assert study_reference.set_study_rate(0.2) == pytest.approx(np.quantile(held_out, 0.8))
    study_reference.set_study_rate(0.05)
    assert study_reference.study_rate == 0.05


def test_out_of_fold_distances_never_see_the_study_they_judge() -> None:
    train, ids = gaussian_studies(20, 3)
    summaries = ood.study_summaries(train, ids)
    folds = ood.patient_folds(len(summaries), ood.STUDY_FOLDS, 0)
    base = ood.out_of_fold_distances(summaries, seed=0)
    for held in folds:
        rest = np.setdiff1d(np.arange(len(summaries)), held)
        expected = ood.fit_study_detector(summaries[rest]).distance(summaries[held])
        assert np.allclose(base[held], expected)
    # a far outlier: its own distance is large (it never shaped its own detector), and the other
    # studies of its fold, judged by the same detector, do not move
    odd = folds[0][0]
    moved = summaries.copy()
    moved[odd] += 50.0
    again = ood.out_of_fold_distances(moved, seed=0)
    assert again[odd] > 10 * base[odd]
    assert np.allclose(again[folds[0][1:]], base[folds[0][1:]])
    assert not np.allclose(again[folds[1]], base[folds[1]])


def _bytes_without(reference: ood.Reference, part: str, held_out: str = "study_distance",
                   **extra: np.ndarray) -> bytes:
    """The reference's bytes without ``part``'s arrays and its held-out values
    (``validation__<held_out>``), as a release before that part wrote them; ``extra`` arrays
    added."""
    with np.load(io.BytesIO(reference.to_bytes())) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith(f"{part}__")
                  and k != f"validation__{held_out}"}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays, **extra)
    return buf.getvalue()


def test_study_detector_round_trips_and_old_references_still_load(study_reference) -> None:
    shifted, _ = gaussian_studies(1, 7, offset=0.6)
    back = ood.Reference.from_bytes(study_reference.to_bytes())
    assert back.study is not None and back.study_rate == 0.05
    assert back.study.bound == study_reference.study.bound
    assert ood.check(back, {"input": shifted}).reasons == ood.check(
        study_reference, {"input": shifted}).reasons

    # bytes written without a study detector (as every reference before it): slice rules alone
    old = ood.Reference.from_bytes(_bytes_without(study_reference, "study"))
    assert old.study is None and old.study_rate is None
    result = ood.check(old, {"input": shifted})
    assert result.study_distance is None and not result.flagged
    with pytest.raises(ValueError, match="no study detector"):
        old.set_study_rate(0.05)


def test_few_training_patients_leave_the_study_detector_out() -> None:
    train, ids = gaussian_studies(ood.MIN_STUDIES - 1, 4)
    val, val_ids = gaussian_studies(3, 5)
    ref = ood.fit_reference({"input": train}, {"input": val}, study_rate=0.05,
                            train_patients=ids, validation_patients=val_ids)
    assert ref.study is None and "study_distance" not in ref.validation


def test_study_inputs_are_checked() -> None:
    train, ids = gaussian_studies(10, 6)
    with pytest.raises(ValueError, match="patient ids"):
        ood.fit_reference({"input": train}, {"input": train}, study_rate=0.05)
    with pytest.raises(ValueError, match="received shapes"):
        ood.study_summaries(train, ids[:-1])
    with pytest.raises(ValueError, match="study_rate"):
        ood.fit_study(ood.study_summaries(train, ids), ood.study_summaries(train, ids), 1.5)
    with pytest.raises(ValueError, match="shrinkage"):
        ood.fit_study_detector(ood.study_summaries(train, ids), shrinkage=2.0)


# --- the geometry criterion: where and how the head lies in the frame, per study ---
def placed_study(seed: int, slices: int = 12) -> list[np.ndarray]:
    """A synthetic study whose head is shifted and scaled a little (per study), as patients lie
    a little differently in the frame."""
    rng = np.random.default_rng(10_000 + seed)
    dx, dy = rng.normal(0.0, 1.0, 2)
    scale = 1.0 + rng.normal(0.0, 0.03)
    centre = SIZE / 2
    move = np.array([[scale, 0.0, centre * (1 - scale) + dx],
                     [0.0, scale, centre * (1 - scale) + dy]])
    return [cv2.warpAffine(img, move, (SIZE, SIZE), flags=cv2.INTER_LINEAR)
            for img in study(seed, slices)]


def placed_values(seeds: range) -> tuple[np.ndarray, np.ndarray]:
    """Input statistics of placed studies, and the patient id of each row."""
    values = [stats(placed_study(s)) for s in seeds]
    return np.concatenate(values), np.concatenate([[f"p{s}"] * len(v)
                                                   for s, v in zip(seeds, values, strict=True)])


@pytest.fixture(scope="module")
def geometry_reference() -> ood.Reference:
    train, train_ids = placed_values(range(20))
    val, val_ids = placed_values(range(100, 110))
    return ood.fit_reference({"input": train}, {"input": val}, slice_rate=0.01,
                             study_share=0.6, study_rate=0.05, train_patients=train_ids,
                             validation_patients=val_ids)


def _geometry_reasons(result: ood.OodResult) -> list[dict]:
    return [r for r in result.reasons if r["statistic"].endswith("_robust_z")]


def test_head_geometry_statistics_follow_the_head() -> None:
    column = {n: i for i, n in enumerate(ood.INPUT_STAT_NAMES)}
    base = stats(study(9, 4))
    # the synthetic head is centred and wider than tall
    assert np.all(np.abs(base[:, column["head_centre_x"]]) < 0.05)
    assert np.all(base[:, column["head_axis_cos"]] > 0.1)
    assert np.all(base[:, column["head_extent_x"]] > base[:, column["head_extent_y"]])
    turned = stats(foreign_slices("rotated", study(9, 4)))
    assert np.all(turned[:, column["head_axis_cos"]] < -0.1)
    assert np.all(turned[:, column["head_extent_y"]] > turned[:, column["head_extent_x"]])
    # part of the head enlarged to the frame: it reaches across the whole frame
    cropped = stats(foreign_slices("cropped", study(9, 4), seed=1))
    assert np.all(cropped[:, column["head_extent_x"]] > base[:, column["head_extent_x"]])
    # the head moved a sixteenth of the frame to the right (still inside it)
    moved = [np.roll(img, SIZE // 16, axis=1) for img in study(9, 4)]
    assert np.all(np.abs(stats(moved)[:, column["head_centre_x"]] - 1 / 16) < 0.02)


def test_the_head_mask_ignores_a_background_offset_and_speckle() -> None:
    rng = np.random.default_rng(5)
    img = make_slice(rng, SIZE, None)[0]
    clean = ood.head_mask(img.astype(np.float32))
    odd = img.astype(np.float32)
    odd[..., 0] += 60.0  # one channel with a constant background level
    odd[rng.random((SIZE, SIZE)) < 0.02] = 200.0  # bright speckle outside the head too
    mask = ood.head_mask(np.clip(odd, 0, 255))
    assert 0.4 < clean.mean() < 0.7
    assert np.mean(mask != clean) < 0.01
    # the foreground level alone would take the whole frame
    assert (odd.max(axis=-1) >= ood.FOREGROUND_LEVEL).mean() == 1.0


@pytest.mark.parametrize("kind", ["rotated", "cropped"])
def test_turned_and_cropped_studies_are_flagged_by_the_geometry_criterion(
        geometry_reference: ood.Reference, kind: str) -> None:
    bound = geometry_reference.geometry.bound
    for seed in range(3):
        odd = foreign_slices(kind, placed_study(200 + seed), seed=seed)
        result = ood.check(geometry_reference, {"input": stats(odd)})
        reasons = _geometry_reasons(result)
        assert result.flagged and reasons, (kind, result.reasons)
        assert result.geometry_score == pytest.approx(reasons[0]["value"], abs=1e-4)
        assert all(r["value"] > r["bound"] == pytest.approx(bound, abs=1e-4) for r in reasons)
        assert [r["value"] for r in reasons] == sorted((r["value"] for r in reasons),
                                                       reverse=True)
        names = {r["statistic"].removesuffix("_robust_z") for r in reasons}
        assert names <= set(ood.GEOMETRY_STATS)
    if kind == "rotated":
        assert "head_axis_cos" in names  # the head is elongated the other way


def test_in_distribution_studies_pass_the_geometry_criterion(
        geometry_reference: ood.Reference) -> None:
    results = [ood.check(geometry_reference, {"input": stats(placed_study(300 + s))})
               for s in range(12)]
    assert all(r.geometry_score is not None for r in results)
    assert not any(_geometry_reasons(r) for r in results)
    assert max(r.geometry_score for r in results) < geometry_reference.geometry.bound


def test_the_study_rate_is_shared_with_the_geometry_criterion(
        geometry_reference: ood.Reference) -> None:
    ref = geometry_reference
    geometry_held, study_held = ref.validation["geometry_score"], ref.validation["study_distance"]
    assert len(geometry_held) == len(study_held) == 30
    share = ood.GEOMETRY_SHARE * 0.05
    assert ref.geometry.bound == pytest.approx(np.quantile(geometry_held, 1 - share))
    assert ref.study.bound == pytest.approx(np.quantile(study_held, 1 - (0.05 - share)))
    try:
        ref.set_study_rate(0.2)
        assert ref.geometry.bound == pytest.approx(
            np.quantile(geometry_held, 1 - ood.GEOMETRY_SHARE * 0.2))
        assert ref.study.bound == pytest.approx(
            np.quantile(study_held, 1 - (1 - ood.GEOMETRY_SHARE) * 0.2))
    finally:
        ref.set_study_rate(0.05)
    assert ref.study_rate == 0.05


def test_the_geometry_criterion_is_robust_to_an_odd_training_study() -> None:
    train, ids = placed_values(range(12))
    summaries = ood.study_summaries(train, ids)
    base = ood.fit_geometry_check(summaries)
    odd = summaries.copy()
    odd[0, ood.geometry_columns(ood.GEOMETRY_STATS)] += 1.0
    moved = ood.fit_geometry_check(odd)
    assert np.allclose(moved.centre, base.centre, atol=0.02)
    assert np.all(moved.scale < 2 * base.scale)
    # a statistic that never varies is judged with the floor on its spread
    flat = summaries.copy()
    flat[:, ood.INPUT_STAT_NAMES.index("head_centre_y")] = 0.0
    assert ood.fit_geometry_check(flat).scale[1] == ood.GEOMETRY_MIN_SPREAD
    with pytest.raises(ValueError, match="received \\['head_tilt'\\]"):
        ood.fit_geometry_check(summaries, names=("head_tilt",))
    with pytest.raises(ValueError, match="study summaries, received shape"):
        base.distance(summaries[:, :12])


def test_geometry_criterion_round_trips_and_old_references_still_load(
        geometry_reference: ood.Reference, caplog: pytest.LogCaptureFixture) -> None:
    odd = stats(foreign_slices("rotated", placed_study(210)))
    back = ood.Reference.from_bytes(geometry_reference.to_bytes())
    assert back.geometry is not None and back.geometry.names == ood.GEOMETRY_STATS
    assert back.geometry.bound == geometry_reference.geometry.bound
    assert np.array_equal(back.validation["geometry_score"],
                          geometry_reference.validation["geometry_score"])
    first = ood.check(geometry_reference, {"input": odd})
    assert ood.check(back, {"input": odd}).reasons == first.reasons and _geometry_reasons(first)

    # bytes written before the geometry criterion: the study detector alone, at the whole rate
    old = ood.Reference.from_bytes(_bytes_without(geometry_reference, "geometry",
                                                  "geometry_score"))
    assert old.geometry is None and old.study is not None
    result = ood.check(old, {"input": odd})
    assert result.geometry_score is None and not _geometry_reasons(result)
    assert old.set_study_rate(0.05) == pytest.approx(
        np.quantile(old.validation["study_distance"], 0.95))

    # a reference naming a statistic this code does not compute: its geometry criterion is left
    unknown = _bytes_without(geometry_reference, "geometry", "geometry_score",
                             geometry__names=np.array(["head_tilt"]),
                             geometry__centre=np.zeros(1), geometry__scale=np.ones(1),
                             geometry__bound=np.array(3.0))
    with caplog.at_level("WARNING"):
        assert ood.Reference.from_bytes(unknown).geometry is None
    assert "head_tilt" in caplog.text


def test_other_input_statistics_leave_the_geometry_criterion_out(study_reference) -> None:
    # the study detector on statistics other than this code's (12 columns): no geometry
    assert study_reference.study is not None and study_reference.geometry is None
    assert "geometry_score" not in study_reference.validation
