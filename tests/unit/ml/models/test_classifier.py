"""Classifier: build, train, freeze, .keras round trip, weights file and preprocessing."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from brain_tumor.ml.models import load_model
from brain_tumor.ml.models.classifier import (
    CaffePreprocessing,
    build_classifier,
    get_backbone,
    set_backbone_trainable,
)

SIZE = 32
# Keras' TF backend calls np.array(variable) internally; numpy 2 warns about the copy keyword.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    y = (np.arange(n) % 2).astype("float32")
    return x, y


def _compile(model: keras.Model) -> None:
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")


def _head_weights(model: keras.Model) -> list:
    names = ("head_dense", "tumor_probability")
    return [w for name in names for w in model.get_layer(name).weights]


def _same_vars(a: list, b: list) -> bool:
    return sorted(id(v) for v in a) == sorted(id(v) for v in b)


def test_tiny_trains_saves_and_reloads(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = build_classifier(image_size=SIZE, backbone="tiny", dense_units=8)
    assert model.output_shape == (None, 1)
    assert isinstance(model.get_layer("preprocess"), keras.layers.Rescaling)
    _compile(model)
    x, y = _data(8)
    history = model.fit(x.astype("float32"), y, epochs=2, batch_size=4, verbose=0)
    assert len(history.history["loss"]) == 2
    before = model.predict(x, verbose=0)  # uint8 input is accepted too
    assert before.shape == (8, 1) and np.all((before >= 0) & (before <= 1))
    path = tmp_path / "clf.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, atol=1e-6)
    np.testing.assert_allclose(load_model(path).predict(x, verbose=0), before, atol=1e-6)


def test_frozen_backbone_really_freezes() -> None:
    keras.utils.set_random_seed(1)
    model = build_classifier(image_size=SIZE, backbone="tiny", dense_units=8)
    set_backbone_trainable(model, "frozen")
    _compile(model)
    assert len(model.trainable_weights) == 4
    assert _same_vars(model.trainable_weights, _head_weights(model))
    backbone = get_backbone(model)
    bb_before = [w.copy() for w in backbone.get_weights()]  # includes BN moving stats
    head_before = [keras.ops.convert_to_numpy(w) for w in _head_weights(model)]
    x, y = _data(4)
    model.train_on_batch(x.astype("float32"), y)
    for a, b in zip(bb_before, backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, keras.ops.convert_to_numpy(b))
        for a, b in zip(head_before, _head_weights(model), strict=True)
    )


def test_top_and_all_modes_tiny() -> None:
    model = build_classifier(image_size=SIZE, backbone="tiny", dense_units=8)
    set_backbone_trainable(model, "top")
    conv = get_backbone(model).get_layer("tiny_top_conv")
    assert _same_vars(model.trainable_weights, _head_weights(model) + conv.trainable_weights)
    assert not get_backbone(model).get_layer("tiny_top_bn").trainable
    set_backbone_trainable(model, "all")
    n_all = len(model.trainable_weights)
    assert n_all == 4 + 3 + 3 * 2  # head + 3 convs + 3 BN (gamma, beta)
    with pytest.raises(ValueError, match="'partial'"):
        set_backbone_trainable(model, "partial")


@pytest.fixture(scope="module")
def resnet() -> keras.Model:
    keras.utils.set_random_seed(2)
    return build_classifier(image_size=SIZE, weights=None, backbone="resnet50", dense_units=16)


def test_resnet50_trains_one_step_and_roundtrips(resnet: keras.Model, tmp_path: Path) -> None:
    # Eager SGD: tracing a ResNet50 train step costs ~20 s on CPU; eager takes ~1 s.
    resnet.compile(
        optimizer=keras.optimizers.SGD(1e-3), loss="binary_crossentropy", run_eagerly=True
    )
    x, y = _data(4, seed=3)
    resnet.fit(x.astype("float32"), y, epochs=1, batch_size=4, verbose=0)
    before = resnet.predict(x, verbose=0)
    path = tmp_path / "resnet.keras"
    resnet.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, atol=1e-6)


def test_resnet50_top_mode_unfreezes_only_conv5_without_bn(resnet: keras.Model) -> None:
    set_backbone_trainable(resnet, "top")
    backbone = get_backbone(resnet)
    trainable = [layer for layer in backbone.layers if layer.trainable_weights]
    assert trainable and all(layer.name.startswith("conv5_") for layer in trainable)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    set_backbone_trainable(resnet, "frozen")
    assert _same_vars(resnet.trainable_weights, _head_weights(resnet))
    set_backbone_trainable(resnet, "all")


def test_resnet50_weights_from_file(resnet: keras.Model, tmp_path: Path) -> None:
    path = tmp_path / "w.weights.h5"
    get_backbone(resnet).save_weights(path)
    model = build_classifier(image_size=SIZE, weights=str(path), dense_units=16)
    assert isinstance(model.get_layer("preprocess"), CaffePreprocessing)
    expected, got = get_backbone(resnet).get_weights(), get_backbone(model).get_weights()
    assert len(expected) == len(got) > 0
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_caffe_preprocessing_matches_keras_and_serializes(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 255, size=(2, 5, 5, 3)).astype("float32")
    expected = keras.applications.resnet50.preprocess_input(x.copy())
    got = keras.ops.convert_to_numpy(CaffePreprocessing()(x))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    inp = keras.Input((5, 5, 3))
    model = keras.Model(inp, CaffePreprocessing(name="preprocess")(inp))
    model.save(tmp_path / "pre.keras")
    loaded = keras.saving.load_model(tmp_path / "pre.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 0}, "got 0"),
        ({"image_size": -8}, "got -8"),
        ({"backbone": "vgg99"}, "'vgg99'"),
        ({"image_size": 16}, "got 16"),
        ({"dropout": 1.0}, "got 1.0"),
        ({"dense_units": 0}, "got 0"),
        ({"weights": "weights.txt"}, "'weights.txt'"),
        ({"weights": "/nonexistent/w.weights.h5"}, "does not exist"),
        ({"backbone": "tiny", "weights": "imagenet", "image_size": 32}, "'imagenet'"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_classifier(**kwargs)
