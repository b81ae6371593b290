"""The out-of-distribution check on synthetic studies: bounds from validation, foreign kinds
flagged, in-distribution studies not, drift statistics."""

from __future__ import annotations

import numpy as np
import pytest

from brain_tumor.devtools.synth import make_slice
from brain_tumor.devtools.synth_foreign import FOREIGN_KINDS, foreign_slices
from brain_tumor.ml.predict import to_model_input
from brain_tumor.scoring import ood

SIZE = 64


def study(seed: int, slices: int = 12) -> list[np.ndarray]:
    """A synthetic in-distribution study (half its slices with a lesion)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(slices):
        lesion = (0.5, 0.5, 0.1) if k % 2 else None
        out.append(make_slice(rng, SIZE, lesion)[0])
    return out


def stats(slices: list[np.ndarray]) -> np.ndarray:
    return ood.input_statistics(to_model_input(slices, 32))


@pytest.fixture(scope="module")
def reference() -> ood.Reference:
    train = np.concatenate([stats(study(s)) for s in range(20)])
    val = np.concatenate([stats(study(s)) for s in range(100, 110)])
    return ood.fit_reference({"input": train}, {"input": val}, slice_rate=0.01,
                             validation_prob=np.linspace(0, 1, len(val)))


def test_statistics_have_one_column_per_name() -> None:
    values = stats(study(0, 3))
    assert values.shape == (3, len(ood.INPUT_STAT_NAMES))
    assert np.all(np.isfinite(values))
    fg = ood.INPUT_STAT_NAMES.index("foreground_fraction")
    assert 0.2 < values[0, fg] < 0.9  # the synthetic head fills part of the frame


def test_bound_is_the_validation_quantile(reference: ood.Reference) -> None:
    det = reference.detector("input")
    val = np.concatenate([stats(study(s)) for s in range(100, 110)])
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
