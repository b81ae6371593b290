"""ONNX export of the classifier and segmenter: ONNX Runtime gives what Keras gives."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from brain_tumor.ml.export import (
    CLASSIFIER_ONNX,
    EXPORT_TOLERANCE,
    SEGMENTER_ONNX,
    ExportMismatch,
    check_export,
    export_for_cpu,
    export_models,
)
from brain_tumor.ml.models.classifier import CaffePreprocessing, build_classifier
from brain_tumor.ml.models.segmenter import build_segmenter
from brain_tumor.ml.predict import LoadedModel
from brain_tumor.scoring.engines import RUNTIMES, KerasEngine, OnnxEngine

SIZE = 32
DENSE = 16
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning",
                                        "ignore::FutureWarning", "ignore::UserWarning")


def _slices(n: int, seed: int = 1) -> list[np.ndarray]:
    """Native-size uint8 slices of mixed sizes (resized to SIZE by the engines)."""
    rng = np.random.default_rng(seed)
    sizes = [(48, 48), (40, 56), (32, 32)]
    return [rng.integers(0, 256, size=(*sizes[i % 3], 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def export_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[KerasEngine, Path]:
    """Tiny Keras models as an engine, and the folder of their export."""
    keras.utils.set_random_seed(5)
    classifier = build_classifier(SIZE, backbone="tiny", dense_units=DENSE)
    segmenter = build_segmenter(SIZE, base_filters=4, depth=2)
    folder = tmp_path_factory.mktemp("export")
    paths = export_models(classifier, segmenter, folder)
    assert [p.name for p in paths] == [CLASSIFIER_ONNX, SEGMENTER_ONNX]
    record = {"image_size": SIZE, "threshold": 0.5}
    return KerasEngine(LoadedModel("m-test", record, classifier, segmenter), batch_size=4), folder


@pytest.fixture(params=RUNTIMES)
def exported(request: pytest.FixtureRequest, export_folder) -> tuple[KerasEngine, OnnxEngine]:
    """The Keras engine and the export run by one runtime (OpenVINO, ONNX Runtime)."""
    keras_engine, folder = export_folder
    return keras_engine, OnnxEngine("m-test", keras_engine.record, folder, batch_size=4,
                                    threads=1, runtime=request.param)


def test_onnx_and_keras_agree_on_probabilities_masks_and_features(exported):
    keras_engine, onnx_engine = exported
    assert onnx_engine.name in RUNTIMES
    images = _slices(10)

    k, o = keras_engine.predict(images), onnx_engine.predict(images)

    assert o.prob.shape == k.prob.shape == (10,)
    np.testing.assert_allclose(o.prob, k.prob, rtol=0, atol=EXPORT_TOLERANCE)
    assert o.maps.shape == k.maps.shape == (10, SIZE, SIZE)
    assert np.mean((o.maps >= 0.5) == (k.maps >= 0.5)) >= 0.999
    np.testing.assert_allclose(o.maps, k.maps, rtol=0, atol=1e-4)
    assert o.features.shape == k.features.shape == (10, 32)  # the tiny backbone's last filters
    np.testing.assert_allclose(o.features, k.features, rtol=0, atol=1e-4)


def test_an_unknown_runtime_is_refused(export_folder):
    with pytest.raises(ValueError, match="received 'tvm'"):
        OnnxEngine("m-test", {"image_size": SIZE}, export_folder[1], runtime="tvm")


def test_the_onnx_engine_batches_a_study_larger_than_its_batch(exported):
    _, onnx_engine = exported
    images = _slices(7)

    whole = onnx_engine.predict(images)
    one_by_one = [onnx_engine.predict([img]) for img in images]

    np.testing.assert_allclose(whole.prob, [p.prob[0] for p in one_by_one], atol=1e-6)
    assert whole.features.shape[0] == 7


def test_a_custom_preprocessing_layer_exports(tmp_path: Path):
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = CaffePreprocessing(name="preprocess")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="tumor_probability")(x)
    classifier = keras.Model(inputs, outputs)
    segmenter = build_segmenter(SIZE, base_filters=2, depth=1)

    export_models(classifier, segmenter, tmp_path)

    found = check_export(classifier, segmenter, tmp_path)
    assert found["probability_max_abs"] <= EXPORT_TOLERANCE
    assert found["mask_agreement"] >= 0.999


def test_an_export_that_disagrees_is_refused(tmp_path: Path):
    classifier = build_classifier(SIZE, backbone="tiny", dense_units=DENSE)
    segmenter = build_segmenter(SIZE, base_filters=2, depth=1)
    export_models(classifier, segmenter, tmp_path)
    other = build_classifier(SIZE, backbone="tiny", dense_units=DENSE)
    other.get_layer("tumor_probability").bias.assign([3.0])  # a different model

    with pytest.raises(ExportMismatch, match="disagrees"):
        check_export(other, segmenter, tmp_path)


def test_a_failed_export_is_logged_and_leaves_no_files(tmp_path: Path, caplog):
    segmenter = build_segmenter(SIZE, base_filters=2, depth=1)
    no_pool = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(),
                                keras.layers.Dense(1, activation="sigmoid")])

    assert export_for_cpu(no_pool, segmenter, tmp_path) is False

    assert "ONNX export failed" in caplog.text
    assert not list(tmp_path.glob("*.onnx"))
