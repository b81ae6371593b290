"""brain_tumor.ingest.split: patient-level, stable, stratified train/val/test assignment."""

from __future__ import annotations

import logging
import math
import re

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brain_tumor.ingest.split import SPLITS, SplitConfig, SplitError, assign_split, split_counts

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_manifest(patients: list[tuple[str, str, int, int]]) -> pd.DataFrame:
    """Slice manifest from (patient_id, institution, slices, tumor_slices) tuples."""
    rows = [
        {"patient_id": pid, "institution": inst, "label": int(i < tumor), "slice": i}
        for pid, inst, slices, tumor in patients
        for i in range(slices)
    ]
    return pd.DataFrame(rows)


def grid(n: int, institutions: int = 4, tumor_every: int = 2) -> pd.DataFrame:
    """Deterministic manifest of n patients over a few institutions."""
    return make_manifest(
        [(f"P{i:04d}", f"site{i % institutions}", 3 + i % 4, 2 if i % tumor_every == 0 else 0)
         for i in range(n)]
    )


@st.composite
def manifests(
    draw: st.DrawFn, min_patients: int = 3, max_patients: int = 60, tumor_patients: int = 3
) -> pd.DataFrame:
    """Random manifests whose first `tumor_patients` patients bear a tumor."""
    ids = draw(st.lists(st.text("abcXYZ0129-_", min_size=1, max_size=8), min_size=min_patients,
                        max_size=max_patients, unique=True))
    sites = draw(st.lists(st.sampled_from(["A", "B", "C", "D", "E"]), min_size=len(ids),
                          max_size=len(ids)))
    patients = []
    for i, (pid, site) in enumerate(zip(ids, sites, strict=True)):
        slices = draw(st.integers(1, 6))
        tumor = draw(st.integers(1 if i < tumor_patients else 0, slices))
        patients.append((pid, site, slices, tumor))
    return make_manifest(patients)


def assert_valid(split: pd.DataFrame, manifest: pd.DataFrame, config: SplitConfig) -> None:
    """Shared invariants of every assign_split output."""
    assert list(split.columns) == ["patient_id", "split", "institution", "slices", "tumor_slices"]
    assert split["patient_id"].is_unique
    assert split["patient_id"].tolist() == sorted(manifest["patient_id"].astype(str).unique())
    assert set(split["split"]) <= set(SPLITS)
    per_patient = manifest.groupby("patient_id")["label"].agg(["size", "sum"])
    indexed = split.set_index("patient_id")
    assert (indexed["slices"] == per_patient["size"].reindex(indexed.index)).all()
    assert (indexed["tumor_slices"] == per_patient["sum"].reindex(indexed.index)).all()
    assert (split_counts(split)["tumor_slices"] >= config.min_tumor_slices).all()


@FAST
@given(manifests())
def test_every_patient_in_exactly_one_split(manifest: pd.DataFrame) -> None:
    config = SplitConfig()
    assert_valid(assign_split(manifest, config), manifest, config)


@FAST
@given(manifests(), st.randoms(use_true_random=False), st.integers(0, 2**31))
def test_deterministic_and_row_order_independent(manifest: pd.DataFrame, rnd, seed: int) -> None:
    config = SplitConfig(seed=seed)
    first = assign_split(manifest, config)
    order = list(range(len(manifest)))
    rnd.shuffle(order)
    shuffled = manifest.iloc[order].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, assign_split(manifest, config))
    pd.testing.assert_frame_equal(first, assign_split(shuffled, config))


@FAST
@given(manifests(min_patients=3, max_patients=40), manifests(min_patients=1, max_patients=30))
def test_previous_patients_keep_their_split(old: pd.DataFrame, extra: pd.DataFrame) -> None:
    config = SplitConfig()
    extra = extra.assign(patient_id="new-" + extra["patient_id"])
    before = assign_split(old, config)
    full = pd.concat([old, extra], ignore_index=True)
    after = assign_split(full, config, previous=before)
    assert_valid(after, full, config)
    kept = after.set_index("patient_id").loc[before["patient_id"], "split"]
    assert kept.tolist() == before["split"].tolist()


def test_dropped_patients_leave_the_output_and_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    config = SplitConfig()
    before = assign_split(grid(40), config)
    manifest = grid(40)
    manifest = manifest[manifest["patient_id"] != "P0005"]
    with caplog.at_level(logging.INFO, logger="brain_tumor.ingest.split"):
        after = assign_split(manifest, config, previous=before)
    assert "P0005" not in set(after["patient_id"])
    assert "P0005" in caplog.text
    expected = before[before["patient_id"] != "P0005"].reset_index(drop=True)
    assert after["split"].tolist() == expected["split"].tolist()


def test_fractions_respected_on_large_manifest() -> None:
    config = SplitConfig(seed=7)
    counts = split_counts(assign_split(grid(200, institutions=5), config))
    for name, target in zip(SPLITS, (140, 30, 30), strict=True):
        assert abs(counts.loc[name, "patients"] - target) <= 2, counts


def test_new_patients_fill_the_deficit_left_by_previous() -> None:
    config = SplitConfig()
    before = assign_split(grid(100), config)
    full = grid(200)  # the first 100 patients are those of grid(100)
    after = assign_split(full, config, previous=before)
    counts = split_counts(after)["patients"]
    for name, target in zip(SPLITS, (140, 30, 30), strict=True):
        assert abs(counts[name] - target) <= 2, counts


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_institutions_spread_across_splits(seed: int) -> None:
    sizes = {"big": 60, "mid": 25, "small": 10, "tiny": 3}
    patients = [(f"{site}-{i}", site, 4, i % 2) for site, n in sizes.items() for i in range(n)]
    split = assign_split(make_manifest(patients), SplitConfig(seed=seed))
    for site, n in sizes.items():
        if n >= 10:
            assert set(split.loc[split["institution"] == site, "split"]) == set(SPLITS), site


@FAST
@given(st.integers(1, 3).flatmap(lambda m: st.tuples(st.just(m), manifests(3 * m, 60, 3 * m))))
def test_every_split_gets_min_tumor_slices(case: tuple[int, pd.DataFrame]) -> None:
    # With 3 * minimum tumor-bearing patients the floor is always reachable.
    minimum, manifest = case
    config = SplitConfig(min_tumor_slices=minimum)
    assert_valid(assign_split(manifest, config), manifest, config)


def test_scarce_tumor_patients_are_spread_over_all_splits() -> None:
    patients = [(f"P{i:02d}", "A", 5, 3 if i in (4, 11, 27) else 0) for i in range(30)]
    split = assign_split(make_manifest(patients), SplitConfig())
    counts = split_counts(split)
    assert (counts["tumor_slices"] == 3).all()
    for name, target in zip(SPLITS, (21, 4.5, 4.5), strict=True):
        assert abs(counts.loc[name, "patients"] - target) <= 1, counts


def test_too_few_patients_raises() -> None:
    manifest = make_manifest([("a", "A", 3, 1), ("b", "A", 3, 1)])
    with pytest.raises(SplitError, match="got 2"):
        assign_split(manifest, SplitConfig())


def test_too_few_tumor_patients_raises() -> None:
    patients = [(f"P{i:02d}", "A", 5, 2 if i < 2 else 0) for i in range(30)]
    with pytest.raises(SplitError, match=r"train has \d+.*val has \d+.*test has \d+.*needs 1"):
        assign_split(make_manifest(patients), SplitConfig())
    assign_split(make_manifest(patients), SplitConfig(min_tumor_slices=0))


def test_tumor_patients_fixed_elsewhere_raise() -> None:
    patients = [(f"P{i:02d}", "A", 5, 2 if i < 3 else 0) for i in range(30)]
    manifest = make_manifest(patients)
    previous = pd.DataFrame({"patient_id": [f"P{i:02d}" for i in range(30)],
                             "split": ["train"] * 28 + ["val", "test"]})
    with pytest.raises(SplitError, match="val has 0"):
        assign_split(manifest, SplitConfig(), previous=previous)


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"train": 0.0, "val": 0.5, "test": 0.5}, "0.0"),
        ({"train": 1.2, "val": -0.1, "test": -0.1}, "1.2"),
        ({"train": 0.7, "val": -0.15, "test": 0.45}, "-0.15"),
        ({"train": 0.5, "val": 0.3, "test": 0.3}, "1.1"),
        ({"train": math.nan}, "nan"),
        ({"min_tumor_slices": -1}, "-1"),
        ({"min_tumor_slices": 1.5}, "1.5"),
        ({"seed": "x"}, "'x'"),
    ],
)
def test_bad_config_raises_with_value(kwargs: dict, shown: str) -> None:
    with pytest.raises(ValueError, match=re.escape(shown)):
        SplitConfig(**kwargs)


def test_missing_columns_are_named() -> None:
    manifest = grid(10).drop(columns=["institution", "label"])
    with pytest.raises(ValueError, match="institution.*label"):
        assign_split(manifest, SplitConfig())


def test_bad_labels_raise() -> None:
    manifest = grid(10).assign(label=2)
    with pytest.raises(ValueError, match="label must be 0 or 1, got \\[2\\]"):
        assign_split(manifest, SplitConfig())


def test_previous_with_unknown_split_raises() -> None:
    previous = pd.DataFrame({"patient_id": ["P0000"], "split": ["holdout"]})
    with pytest.raises(ValueError, match="holdout"):
        assign_split(grid(10), SplitConfig(), previous=previous)


def test_previous_without_split_column_raises() -> None:
    with pytest.raises(ValueError, match="split"):
        assign_split(grid(10), SplitConfig(), previous=pd.DataFrame({"patient_id": ["P0000"]}))


def test_split_counts_totals() -> None:
    manifest = grid(50)
    counts = split_counts(assign_split(manifest, SplitConfig()))
    assert counts.index.tolist() == list(SPLITS)
    assert counts.columns.tolist() == ["patients", "slices", "tumor_slices"]
    assert counts["patients"].sum() == 50
    assert counts["slices"].sum() == len(manifest)
    assert counts["tumor_slices"].sum() == manifest["label"].sum()
