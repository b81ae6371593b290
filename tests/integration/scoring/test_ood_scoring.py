"""The out-of-distribution check end to end: the session model's reference, studies scored with
it (in distribution, each foreign kind, reduced sequences, withheld results), batch counts and
drift."""

from __future__ import annotations

import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from support import copy_model, write_tiff_study

from brain_tumor import steps, telemetry
from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.devtools.synth_foreign import FOREIGN_KINDS, foreign_slices
from brain_tumor.ingest.imaging import decode_image
from brain_tumor.ml.ood_reference import OOD_FILE, load_reference
from brain_tumor.ml.predict import load_model_version
from brain_tumor.scoring import ood
from brain_tumor.scoring import study as score
from brain_tumor.scoring.contracts import Study
from brain_tumor.scoring.engines import study_input
from brain_tumor.scoring.overlay import BANNER_RED
from brain_tumor.scoring.readers import upload_study
from brain_tumor.settings import Settings
from brain_tumor.store.datasets import DatasetStore
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.schemas import validate_record, validate_table
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

#: the session model's training export (tests/conftest.py ``trained``)
TRAINED_SPEC = SynthSpec(patients=10, slices=6, size=32, seed=3, tumor_free_patients=1)


@pytest.fixture
def env(trained) -> tuple[Settings, ObjectStore, str]:
    """A fresh bucket holding a copy of the session model with its reference."""
    source, record = trained
    settings = source.model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}",
                                         "engine": "keras"})
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    version = copy_model(source, record["model_version"], settings)
    assert store.exists(ModelStore(store, settings).key(version, OOD_FILE))
    return settings, store, version


@pytest.fixture(scope="module")
def test_patient_slices(trained, tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """The native slices of one of the session model's test patients (never seen in training)."""
    settings, record = trained
    split = DatasetStore(ObjectStore.from_settings(settings), settings).split(
        record["dataset_version"])
    patient = sorted(split.loc[split["split"] == "test", "patient_id"])[0]
    folders = make_studies(tmp_path_factory.mktemp("trained-studies"), TRAINED_SPEC)
    folder = next(f for f in folders if f.name == patient)
    return [decode_image(p.read_bytes()) for p in sorted(folder.glob("*.tif"))]


def _upload(store: ObjectStore, settings: Settings, folder: Path) -> str:
    return upload_study(IncomingStore(store, settings), folder)[0]


def _score(store: ObjectStore, settings: Settings, version: str, sid: str) -> dict:
    model = load_model_version(store, settings, version)
    return score.build_pipeline(store, settings, model).score(sid)


def test_training_writes_the_reference_bounded_on_validation(trained):
    settings, record = trained
    store = ObjectStore.from_settings(settings)
    entry = record["ood"]
    assert store.exists(ModelStore(store, settings).key(record["model_version"], OOD_FILE))
    reference = load_reference(store, settings, record)
    assert reference is not None
    assert {d.name for d in reference.detectors} == {"input", "features"}
    assert entry["bounds"] == {d.name: pytest.approx(d.bound) for d in reference.detectors}
    assert entry["slice_rate"] == settings.ood_slice_rate
    # every validation slice, and no more, set the bounds and the drift references
    assert entry["validation_slices"] == record["val_slices"]
    assert len(reference.validation["probability"]) == record["val_slices"]
    assert 0 < entry["train_slices"] <= min(record["train_slices"], settings.ood_max_train_slices)
    # the input statistics were taken on the model input as the version maps it
    assert reference.input_norm == entry["input_norm"] == record["intensity_norm"]
    assert reference.judges_inputs()


def test_an_unseen_patient_of_the_training_data_is_not_flagged(env, test_patient_slices,
                                                               tmp_path):
    settings, store, version = env
    sid = _upload(store, settings, write_tiff_study(tmp_path / "in-dist", test_patient_slices))

    result = _score(store, settings, version, sid)

    summary = ScoreStore(store, settings).summary(version, sid)
    assert summary["out_of_distribution"] is False and summary["ood_reasons"] == []
    assert summary["withheld"] is False and summary["ood_note"] is None
    assert 0 <= summary["ood_score"] and result["status"] == "scored"
    table = validate_table("scored_slices", store.get_parquet(
        ScoreStore(store, settings).output_key(version, sid, "slices.parquet")))
    assert table["ood_score"].notna().all()


@pytest.mark.parametrize("kind", FOREIGN_KINDS)
def test_each_foreign_kind_is_flagged_with_reasons(env, test_patient_slices, tmp_path, kind):
    settings, store, version = env
    folder = write_tiff_study(tmp_path / kind, foreign_slices(kind, test_patient_slices))
    sid = _upload(store, settings, folder)

    _score(store, settings, version, sid)

    scores = ScoreStore(store, settings)
    summary = validate_record("study_summary", store.get_json(
        scores.output_key(version, sid, "summary.json")))
    assert summary["out_of_distribution"] is True, summary
    assert summary["ood_score"] > 1 and summary["ood_slices"] >= 1
    for reason in summary["ood_reasons"]:
        assert (reason["statistic"] in ("input_distance", "features_distance", "study_distance")
                or reason["statistic"].removesuffix("_robust_z") in ood.GEOMETRY_STATS)
        assert reason["value"] > reason["bound"] > 0
    assert summary["ood_reasons"]
    table = store.get_parquet(scores.output_key(version, sid, "slices.parquet"))
    assert (table["ood_score"] > 1).mean() >= settings.ood_study_share
    overview = cv2.cvtColor(cv2.imdecode(np.frombuffer(
        scores.get_output(version, sid, "overview.png"), np.uint8), cv2.IMREAD_COLOR),
        cv2.COLOR_BGR2RGB)
    assert (overview[2, :, :] == BANNER_RED).all(axis=-1).mean() > 0.5  # the red flag band


def test_flagged_results_are_withheld_when_the_setting_says_so(env, test_patient_slices,
                                                               tmp_path):
    settings, store, version = env
    settings = settings.model_copy(update={"ood_withhold": True})
    folder = write_tiff_study(tmp_path / "noise", foreign_slices("noise", test_patient_slices))
    sid = _upload(store, settings, folder)
    good = _upload(store, settings, write_tiff_study(tmp_path / "good", test_patient_slices,
                                                     name="GOOD"))

    _score(store, settings, version, sid)
    _score(store, settings, version, good)

    scores = ScoreStore(store, settings)
    summary = scores.summary(version, sid)
    assert summary["out_of_distribution"] is True and summary["withheld"] is True
    names = scores.output_names(version, sid)
    assert not [n for n in names if n.startswith(("masks/", "overlays/"))], names
    assert {"overview.png", "slices.parquet", "summary.json"} <= set(names)
    assert scores.is_done(version, sid)
    assert scores.summary(version, good)["withheld"] is False


def test_reduced_sequences_are_judged_by_the_features_alone(env, test_patient_slices):
    settings, store, version = env
    model = load_model_version(store, settings, version)
    pipeline = score.build_pipeline(store, settings, model)
    zeroed = foreign_slices("noise", test_patient_slices)  # input statistics far off
    study = Study("reduced", zeroed, list(range(1, len(zeroed) + 1)),
                        [f"s{i}" for i in range(len(zeroed))],
                        summary={"reduced_sequences": True})
    raw = pipeline.engine.predict(study.images)

    result, fields = score.ood_check(pipeline.reference, study, raw, model.image_size)

    assert result is not None and fields["ood_note"] == score.REDUCED_NOTE
    assert all(r["statistic"] == "features_distance" for r in fields["ood_reasons"])


def test_a_reference_with_other_input_statistics_leaves_the_features_to_decide(
        env, test_patient_slices):
    settings, store, version = env
    model = load_model_version(store, settings, version)
    pipeline = score.build_pipeline(store, settings, model)
    current = pipeline.reference
    det = current.detector("input")
    older = ood.Reference([ood.Detector("input", det.mean[:40], det.whiten[:40, :40], det.bound),
                           current.detector("features")], current.slice_rate,
                          current.study_share, current.validation)
    noise = foreign_slices("noise", test_patient_slices)
    study = Study("older", noise, list(range(1, len(noise) + 1)),
                  [f"s{i}" for i in range(len(noise))])

    result, fields = score.ood_check(older, study, pipeline.engine.predict(noise),
                                     model.image_size)

    assert result is not None and "refit" in fields["ood_note"]
    assert all(r["statistic"] == "features_distance" for r in fields["ood_reasons"])
    checked, _ = score.ood_check(current, study, pipeline.engine.predict(noise), model.image_size)
    assert checked.flagged and any(r["statistic"] == "input_distance" for r in checked.reasons)


def test_a_version_without_reference_leaves_the_fields_null(env, test_patient_slices, tmp_path):
    settings, store, version = env
    bare = copy_model(settings, version, settings, as_version=f"{version}-bare")
    models = ModelStore(store, settings)
    store.put_json(models.key(bare, "model.json"),
                   {**models.record(bare), "ood": None})
    sid = _upload(store, settings, write_tiff_study(tmp_path / "s", test_patient_slices))

    _score(store, settings, bare, sid)

    summary = ScoreStore(store, settings).summary(bare, sid)
    assert summary["out_of_distribution"] is None and summary["ood_score"] is None
    table = store.get_parquet(ScoreStore(store, settings).output_key(bare, sid, "slices.parquet"))
    assert table["ood_score"].isna().all()


def test_the_batch_summary_counts_flagged_studies_and_states_drift(env, test_patient_slices,
                                                                   tmp_path):
    settings, store, version = env
    ids = [_upload(store, settings, write_tiff_study(tmp_path / "in", test_patient_slices))]
    ids += [_upload(store, settings, write_tiff_study(tmp_path / kind,
                                                      foreign_slices(kind, test_patient_slices)))
            for kind in ("ct", "photograph")]
    chunk = steps.score_chunk(settings, version, ids)
    plan = {"model_version": version, "study_ids": ids, "already_done": 0, "deferred": 0,
            "outside_window": 0}

    summary = steps.finish_batch(settings, plan, chunk["results"], "r-ood", "2026-01-01T00:00:00Z")

    assert summary["studies_scored"] == 3
    assert summary["studies_out_of_distribution"] == 2
    assert [f["study_id"] for f in summary["out_of_distribution"]] == ids[1:]
    assert all(f["reasons"] for f in summary["out_of_distribution"])
    drift = summary["drift"]
    reference = load_reference(store, settings, ModelStore(store, settings).record(version))
    scores = ScoreStore(store, settings)
    probs = [p for sid in ids for p in store.get_parquet(
        scores.output_key(version, sid, "slices.parquet"))["probability"]]
    assert drift["probability"]["n"] == len(probs) == 3 * len(test_patient_slices)
    assert drift["probability"]["ks"] == pytest.approx(
        ood.ks_statistic(reference.validation["probability"], probs), abs=1e-4)
    assert drift["ood_score"]["n"] == 3 and drift["ood_score"]["psi"] >= 0
    # three studies are too few to judge the study scores' drift against the bound
    assert "ood_score" not in drift["exceeded"]
    assert drift["psi_bound"] == pytest.approx(0.25)
    assert ScoreStore(store, settings).batch("r-ood")["studies_out_of_distribution"] == 2
    sent = telemetry.batch_metrics(summary)
    assert telemetry.Metric("scoring.studies_out_of_distribution", 2, "c") in sent
    assert telemetry.Metric("scoring.drift.probability_psi", drift["probability"]["psi"],
                            "g") in sent


def _synthetic_summaries(env, reference: ood.Reference, tmp_path: Path, seed: int,
                         shifts: np.random.Generator | None = None) -> np.ndarray:
    """Study summaries of 24 synthetic studies drawn like the training data's, on the model
    input; with ``shifts``, each study's slices moved by up to a pixel in each direction."""
    settings, store, version = env
    size = int(ModelStore(store, settings).record(version)["image_size"])
    folders = make_studies(tmp_path / "fit", SynthSpec(patients=24, slices=6, size=32, seed=seed))
    summaries = []
    for folder in folders:
        shift = (0, 0) if shifts is None else tuple(int(v) for v in shifts.integers(-1, 2, 2))
        images = [np.roll(decode_image(p.read_bytes()), shift, axis=(0, 1))
                  for p in sorted(folder.glob("*.tif"))]
        summaries.append(ood.study_summary(ood.input_statistics(study_input(
            images, size, str(reference.input_norm)))))
    return np.array(summaries)


def _score_beside_one(env, reference: ood.Reference, slices: list[np.ndarray], tmp_path: Path,
                      kind: str) -> tuple[dict, dict]:
    """Store ``reference`` as the version's, score the unseen patient's study and its ``kind``
    foreign version; (the first's summary, the second's schema-checked summary)."""
    settings, store, version = env
    store.put(ModelStore(store, settings).key(version, OOD_FILE), reference.to_bytes())
    good = _upload(store, settings, write_tiff_study(tmp_path / "in", slices))
    odd = _upload(store, settings, write_tiff_study(
        tmp_path / kind, foreign_slices(kind, slices), name="ODD"))
    _score(store, settings, version, good)
    _score(store, settings, version, odd)
    scores = ScoreStore(store, settings)
    return scores.summary(version, good), validate_record("study_summary", store.get_json(
        scores.output_key(version, odd, "summary.json")))


def test_the_study_detector_judges_whole_studies_through_the_pipeline(env, test_patient_slices,
                                                                      tmp_path):
    settings, store, version = env
    reference = load_reference(store, settings, ModelStore(store, settings).record(version))
    # a study detector fitted on synthetic studies drawn like the training data's
    summaries = _synthetic_summaries(env, reference, tmp_path, seed=21)
    reference.study, _ = ood.fit_study(summaries[:18], summaries[18:], 0.05)
    reference.study_rate = 0.05

    in_distribution, summary = _score_beside_one(env, reference, test_patient_slices, tmp_path,
                                                 "noise")

    assert in_distribution["out_of_distribution"] is False
    study_reasons = [r for r in summary["ood_reasons"] if r["statistic"] == "study_distance"]
    assert len(study_reasons) == 1
    assert study_reasons[0]["value"] > study_reasons[0]["bound"] == pytest.approx(
        reference.study.bound, abs=1e-4)


def test_the_geometry_criterion_flags_a_turned_study_through_the_pipeline(
        env, test_patient_slices, tmp_path):
    settings, store, version = env
    reference = load_reference(store, settings, ModelStore(store, settings).record(version))
    # the geometry criterion fitted on synthetic studies drawn like the training data's, the
    # heads lying a pixel or so differently in the frame from study to study
    summaries = _synthetic_summaries(env, reference, tmp_path, seed=22,
                                     shifts=np.random.default_rng(0))
    reference.geometry, reference.validation["geometry_score"] = ood.fit_geometry(
        summaries[:18], summaries[18:], 0.01)

    in_distribution, summary = _score_beside_one(env, reference, test_patient_slices, tmp_path,
                                                 "rotated")

    assert in_distribution["out_of_distribution"] is False
    geometry = [r for r in summary["ood_reasons"] if r["statistic"].endswith("_robust_z")]
    assert geometry and geometry[0]["statistic"] == "head_axis_cos_robust_z"
    assert all(r["value"] > r["bound"] == pytest.approx(reference.geometry.bound, abs=1e-4)
               for r in geometry)
