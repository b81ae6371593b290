"""Batch scoring at speed: studies predicted together, written behind the model, bf16."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.ingest.imaging import decode_image
from brain_tumor.ml.export import fetch_exported
from brain_tumor.scoring.contracts import Study, StudyPrediction
from brain_tumor.scoring.engines import OnnxEngine, openvino_available
from brain_tumor.scoring.readers import upload_study
from brain_tumor.scoring.study import build_pipeline
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning",
                                         "ignore::FutureWarning", "ignore::UserWarning"),
              pytest.mark.skipif(not openvino_available(), reason="OpenVINO is not installed")]

#: largest |bf16 - f32| probability allowed on the synthetic slices (bfloat16 keeps 8 bits of
#: mantissa: about 2-3 significant digits through the network)
BF16_PROB_TOLERANCE = 0.05
#: least share of probability-map pixels (cut at 0.5) bf16 must agree with f32 on
BF16_MAP_AGREEMENT = 0.99


def _engine(trained, precision: str = "f32", batch_size: int = 4) -> OnnxEngine:
    settings, record = trained
    store = ObjectStore.from_settings(settings)
    version = record["model_version"]
    folder = fetch_exported(store, settings, version)
    assert folder is not None
    return OnnxEngine(version, ModelStore(store, settings).record(version), folder, batch_size,
                      0, "openvino", precision)


@pytest.fixture
def studies(trained, tmp_path: Path):
    """A fresh bucket with five studies of 3, 5 and 2 slices (batches of 4 span them)."""
    source, _ = trained
    settings = source.model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}"})
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    folders = []
    for i, (patients, slices) in enumerate(((2, 3), (2, 5), (1, 2))):
        folders += make_studies(tmp_path / f"s{i}", SynthSpec(
            patients=patients, slices=slices, size=32, seed=20 + i, first_patient=10 * i))
    incoming = IncomingStore(store, settings)
    return settings, store, [upload_study(incoming, folder)[0] for folder in folders]


def _probabilities(store: ObjectStore, scores: ScoreStore, version: str, sid: str) -> np.ndarray:
    table = store.get_parquet(scores.output_key(version, sid, "slices.parquet"))
    return table["probability"].to_numpy()


def test_packed_studies_score_as_they_do_one_by_one(trained, studies):
    settings, store, ids = studies
    engine = _engine(trained)
    calls: list[list[int]] = []
    together = engine.predict_studies

    def record_call(images: list) -> list:
        calls.append([len(study) for study in images])
        return together(images)

    engine.predict_studies = record_call
    packed = build_pipeline(store, settings.model_copy(update={"engine_pack_slices": 100}),
                            engine)
    alone_settings = settings.model_copy(update={"engine_pack_slices": 0,
                                                 "scores_prefix": "alone/"})
    alone = build_pipeline(store, alone_settings, engine)
    alone.write_behind = False

    packed_out = list(packed.score_many(ids))
    alone_out = list(alone.score_many(ids))

    assert [sid for sid, _ in packed_out] == ids == [sid for sid, _ in alone_out]
    # packed: one call for all, batches spanning the studies; then one call a study
    assert calls == [[3, 3, 5, 5, 2], [3], [3], [5], [5], [2]]
    version = engine.version
    for (sid, a), (_, b) in zip(packed_out, alone_out, strict=True):
        assert a["status"] == b["status"] == "scored"
        assert a["tumor_slices"] == b["tumor_slices"]
        np.testing.assert_allclose(
            _probabilities(store, packed.scores, version, sid),
            _probabilities(store, alone.scores, version, sid), atol=1e-5)
        assert packed.scores.is_done(version, sid) and alone.scores.is_done(version, sid)
    assert sum(r["timings"]["model_s"] for _, r in packed_out) > 0


class FailingWriter:
    """Fails the writing of one study (a full disk, say) and writes nothing."""

    def __init__(self, study_id: str) -> None:
        self.study_id = study_id

    def write(self, scores: ScoreStore, model_version: str, study: Study,
              pred: StudyPrediction) -> list[str]:
        """Raise for the chosen study."""
        if study.study_id == self.study_id:
            raise OSError(f"no space left writing {study.study_id}")
        return []


def test_a_failed_write_fails_its_study_alone_and_leaves_no_done_marker(trained, studies):
    settings, store, ids = studies
    engine = _engine(trained)
    pipeline = build_pipeline(store, settings, engine)
    pipeline.writers.append(FailingWriter(ids[1]))

    outcomes = dict(pipeline.score_many(ids))

    assert isinstance(outcomes[ids[1]], OSError)
    assert [outcomes[sid]["status"] for sid in ids if sid != ids[1]] == ["scored"] * 4
    scores, version = pipeline.scores, engine.version
    assert [scores.is_done(version, sid) for sid in ids] == [True, False, True, True, True]
    assert not store.exists(scores.output_key(version, ids[1], "summary.json"))
    pipeline.writers.pop()
    again = dict(pipeline.score_many(ids))  # the rerun completes it
    assert again[ids[1]]["status"] == "scored"
    assert [again[sid]["status"] for sid in ids if sid != ids[1]] == ["skipped"] * 4


def test_bf16_agrees_with_f32_within_tolerance(trained, tmp_path: Path):
    rng = np.random.default_rng(3)
    folders = make_studies(tmp_path, SynthSpec(patients=3, slices=6, size=48, seed=9))
    studies = [[decode_image(p.read_bytes()) for p in sorted(f.glob("*.tif"))] for f in folders]
    studies.append([rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(3)])
    f32, bf16 = _engine(trained, "f32"), _engine(trained, "bf16")

    for images in studies:
        a, b = f32.predict(images), bf16.predict(images)
        assert np.max(np.abs(a.prob - b.prob)) <= BF16_PROB_TOLERANCE
        assert np.mean((a.maps > 0.5) == (b.maps > 0.5)) >= BF16_MAP_AGREEMENT
