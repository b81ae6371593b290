"""The ONNX engine on the session model: exported at publication, same results as Keras."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import numpy as np
import pytest

from brain_tumor import steps
from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.ml.export import EXPORT_FILES, EXPORT_TOLERANCE, ensure_exported
from brain_tumor.scoring.engines import KerasEngine, OnnxEngine, load_engine, openvino_available
from brain_tumor.scoring.readers import upload_study
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning",
                                        "ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture
def env(trained, tmp_path: Path):
    """A fresh bucket with three synthetic studies; the session model stays in its own bucket."""
    source, record = trained
    settings = source.model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}",
                                         "home": tmp_path / "home"})
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    folders = make_studies(tmp_path / "studies", SynthSpec(patients=3, slices=4, size=40, seed=4))
    ids = [upload_study(IncomingStore(store, settings), folder)[0] for folder in folders]
    return source, record["model_version"], settings, store, ids


def _no_keras_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from brain_tumor.ml import predict

    def refuse(*args: object) -> None:
        raise AssertionError("the Keras models were loaded")

    monkeypatch.setattr(predict, "load_model_version", refuse)


def test_training_publishes_the_export(trained):
    settings, record = trained
    models = ModelStore(ObjectStore.from_settings(settings), settings)

    assert all(models.store.exists(models.key(record["model_version"], name))
               for name in EXPORT_FILES)


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_the_onnx_engine_loads_without_keras_and_agrees_with_it(trained, monkeypatch, runtime):
    settings, record = trained
    store = ObjectStore.from_settings(settings)
    version = record["model_version"]
    keras_engine = load_engine(store, settings.model_copy(update={"engine": "keras"}), version)
    _no_keras_load(monkeypatch)
    onnx_engine = load_engine(store, settings.model_copy(update={"engine": runtime,
                                                                 "engine_threads": 1}), version)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(20)]

    k, o = keras_engine.predict(images), onnx_engine.predict(images)

    assert isinstance(keras_engine, KerasEngine) and isinstance(onnx_engine, OnnxEngine)
    assert onnx_engine.name == {"onnx": "onnxruntime", "openvino": "openvino"}[runtime]
    np.testing.assert_allclose(o.prob, k.prob, rtol=0, atol=EXPORT_TOLERANCE)
    assert np.mean((o.maps >= 0.5) == (k.maps >= 0.5)) >= 0.999
    assert o.features.shape == k.features.shape == (20, 32)  # the tiny backbone's top filters


def test_a_chunk_scored_with_onnx_matches_keras(env, monkeypatch):
    source, version, settings, store, ids = env
    from support import copy_model

    copy_keras = settings.model_copy(update={"scores_prefix": "keras-scores/", "engine": "keras"})
    copy_model(source, version, settings)
    ensure_exported(store, settings, version)
    keras_chunk = steps.score_chunk(copy_keras, version, ids)
    _no_keras_load(monkeypatch)
    onnx_chunk = steps.score_chunk(settings.model_copy(update={"engine": "auto"}), version, ids)

    assert [r["status"] for r in onnx_chunk["results"]] == ["scored"] * 3
    for k, o in zip(keras_chunk["results"], onnx_chunk["results"], strict=True):
        assert o["tumor_slices"] == k["tumor_slices"]
        assert o["max_probability"] == pytest.approx(k["max_probability"], abs=EXPORT_TOLERANCE)
    assert (ScoreStore(store, settings).overlay_slices(version, ids[0])
            == ScoreStore(store, copy_keras).overlay_slices(version, ids[0]))


def test_an_older_version_falls_back_to_keras_until_exported(env, caplog):
    from support import copy_model

    source, version, settings, store, _ = env
    copy_model(source, version, settings)  # the .keras files and model.json only
    models = ModelStore(store, settings)

    with caplog.at_level(logging.WARNING, logger="brain_tumor.scoring.engines"):
        engine = load_engine(store, settings, version)
    assert isinstance(engine, KerasEngine)
    assert "has no ONNX export" in caplog.text

    assert ensure_exported(store, settings, version) is True
    assert all(store.exists(models.key(version, name)) for name in EXPORT_FILES)
    assert ensure_exported(store, settings, version) is False
    engine = load_engine(store, settings, version)
    assert isinstance(engine, OnnxEngine)
    assert engine.name == ("openvino" if openvino_available() else "onnxruntime")  # auto
