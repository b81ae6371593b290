"""U-Net segmenter, its loss/metric, and mask geometry."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from brain_tumor.ml.models.losses import bce_dice_loss, dice_coefficient
from brain_tumor.ml.models.segmenter import build_segmenter
from brain_tumor.scoring.geometry import mask_geometry, study_volume

SIZE = 32
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _squares(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy slices with one bright square each; the mask is the square."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(n, SIZE, SIZE, 3)).astype("float32")
    y = np.zeros((n, SIZE, SIZE, 1), dtype="float32")
    for i in range(n):
        s = int(rng.integers(4, 10))
        r, c = rng.integers(0, SIZE - s, size=2)
        x[i, r : r + s, c : c + s, :] = 220.0
        y[i, r : r + s, c : c + s, 0] = 1.0
    return x, y


def _tiny() -> keras.Model:
    model = build_segmenter(image_size=SIZE, base_filters=4, depth=2)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=bce_dice_loss, metrics=[dice_coefficient]
    )
    return model


def test_tiny_unet_learns_squares() -> None:
    keras.utils.set_random_seed(0)
    model = _tiny()
    assert model.output_shape == (None, SIZE, SIZE, 1)
    assert model.layers[-1].name == "tumor_mask"
    x, y = _squares(16)
    history = model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and losses[1] < losses[0], losses
    pred = model.predict(x[:2], verbose=0)
    assert pred.shape == (2, SIZE, SIZE, 1) and np.all((pred >= 0) & (pred <= 1))


def test_roundtrip_with_custom_loss_and_metric(tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    model = _tiny()
    x, y = _squares(8, seed=1)
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    before = model.predict(x, verbose=0)
    scores = model.evaluate(x, y, verbose=0, return_dict=True)
    path = tmp_path / "unet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, atol=1e-6)
    again = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert set(again) == set(scores) and "dice_coefficient" in again
    for key, value in scores.items():
        assert again[key] == pytest.approx(value, abs=1e-5), key
    loaded.fit(x, y, epochs=1, batch_size=4, verbose=0)  # compiled state restored


def test_loss_and_metric_values() -> None:
    t = np.zeros((2, 4, 4, 1), dtype="float32")
    t[0, :2, :2] = 1.0
    perfect = keras.ops.convert_to_numpy(dice_coefficient(t, t))
    np.testing.assert_allclose(perfect, [1.0, 1.0], atol=1e-6)  # smoothing: empty/empty is 1
    p = np.full_like(t, 0.5)
    worse = keras.ops.convert_to_numpy(bce_dice_loss(t, p))
    best = keras.ops.convert_to_numpy(bce_dice_loss(t, np.clip(t, 1e-6, 1 - 1e-6)))
    assert worse.shape == (2,) and np.all(best < worse)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 30, "depth": 2}, "image_size=30"),
        ({"image_size": 100, "depth": 4}, "image_size=100"),
        ({"image_size": 0}, "got 0"),
        ({"depth": 0}, "got 0"),
        ({"base_filters": -1}, "got -1"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_segmenter(**kwargs)


def test_mask_geometry_rectangle() -> None:
    m = np.zeros((6, 8), dtype=np.uint8)
    m[1:3, 3:6] = 255  # rows 1-2, cols 3-5
    g = mask_geometry(m)
    assert g == {"area": 6, "bbox": (1, 3, 2, 5), "centroid": (1.5, 4.0)}
    assert mask_geometry(m[..., None]) == g  # (H, W, 1) accepted


def test_mask_geometry_l_shape_and_empty() -> None:
    m = np.zeros((4, 4), dtype=bool)
    m[0, 0] = m[1, 0] = m[1, 1] = True
    g = mask_geometry(m)
    assert g["area"] == 3 and g["bbox"] == (0, 0, 1, 1)
    assert g["centroid"] == pytest.approx((2 / 3, 1 / 3))
    assert mask_geometry(np.zeros((4, 4))) == {"area": 0, "bbox": None, "centroid": None}


def test_mask_geometry_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(2, 4, 4\)"):
        mask_geometry(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="threshold"):
        mask_geometry(np.full((4, 4), 0.3))


def test_study_volume() -> None:
    masks = np.zeros((3, 4, 4), dtype=np.uint8)
    masks[0, :2, :2] = 1
    masks[2, 0, :3] = 255
    assert study_volume(masks) == 7
    assert study_volume([masks[0], masks[1], masks[2]]) == 7
    assert study_volume(np.zeros((0, 4, 4))) == 0


def _tiny_backbone_pair() -> tuple[keras.Model, keras.Model]:
    """A tiny classifier and a U-Net on its backbone, encoder copied from the classifier."""
    from brain_tumor.ml.models.classifier import build_classifier
    from brain_tumor.ml.models.segmenter import build_backbone_segmenter, copy_encoder_weights

    classifier = build_classifier(SIZE, backbone="tiny", dense_units=8)
    segmenter = build_backbone_segmenter(SIZE, "tiny", base_filters=4)
    assert copy_encoder_weights(segmenter, classifier) == 6  # three conv + three BN layers
    return classifier, segmenter


def test_backbone_unet_starts_from_the_classifier_and_learns_squares(tmp_path: Path) -> None:
    from brain_tumor.ml.models.classifier import get_backbone

    keras.utils.set_random_seed(3)
    classifier, model = _tiny_backbone_pair()
    assert model.output_shape == (None, SIZE, SIZE, 1) and model.layers[-1].name == "tumor_mask"
    source, encoder = get_backbone(classifier), get_backbone(model)
    for name in ("tiny_block1_conv", "tiny_block2_bn", "tiny_top_conv"):
        for a, b in zip(source.get_layer(name).get_weights(), encoder.get_layer(name).get_weights(),
                        strict=True):
            np.testing.assert_array_equal(a, b)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=bce_dice_loss,
                  metrics=[dice_coefficient])
    x, y = _squares(16, seed=4)
    losses = model.fit(x, y, epochs=3, batch_size=4, verbose=0).history["loss"]
    assert losses[-1] < losses[0], losses
    before = model.predict(x[:4], verbose=0)
    model.save(tmp_path / "backbone_unet.keras")
    again = keras.saving.load_model(tmp_path / "backbone_unet.keras", compile=False)
    np.testing.assert_allclose(again.predict(x[:4], verbose=0), before, atol=1e-6)


def test_resnet50_backbone_unet_joins_every_stage() -> None:
    from brain_tumor.ml.models.classifier import build_classifier
    from brain_tumor.ml.models.segmenter import build_backbone_segmenter, copy_encoder_weights

    model = build_backbone_segmenter(64, "resnet50", base_filters=4)
    assert model.output_shape == (None, 64, 64, 1)
    # one up-convolution per ResNet50 stage joined (1/32 -> 1/16 -> ... -> 1/2 -> the stem)
    ups = [layer.name for layer in model.layers if layer.name.endswith("_up")]
    assert ups == ["dec4_up", "dec3_up", "dec2_up", "dec1_up", "dec0_up"]
    assert copy_encoder_weights(model, build_classifier(64, backbone="resnet50")) > 100


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"backbone": "vgg"}, "backbone must be one of"),
    ({"image_size": 48, "backbone": "resnet50"}, "divisible by 32, got 48"),
    ({"image_size": 36, "backbone": "tiny"}, "divisible by 8, got 36"),
    ({"base_filters": 0, "backbone": "tiny"}, "base_filters must be an int >= 1"),
])
def test_backbone_unet_bad_arguments_raise(kwargs: dict, match: str) -> None:
    from brain_tumor.ml.models.segmenter import build_backbone_segmenter

    with pytest.raises(ValueError, match=match):
        build_backbone_segmenter(**{"image_size": SIZE, **kwargs})


def test_encoder_copy_refuses_another_preprocessing() -> None:
    from brain_tumor.ml.models.classifier import build_classifier
    from brain_tumor.ml.models.segmenter import build_backbone_segmenter, copy_encoder_weights

    segmenter = build_backbone_segmenter(SIZE, "tiny", pretrained=True, base_filters=4)
    with pytest.raises(ValueError, match="CaffePreprocessing but the classifier with Rescaling"):
        copy_encoder_weights(segmenter, build_classifier(SIZE, backbone="tiny", dense_units=8))


@pytest.mark.parametrize("pretrained", [False, True])
def test_backbone_unet_encoder_batchnorm_follows_the_classifier(tmp_path: Path,
                                                                pretrained: bool) -> None:
    """The encoder's BatchNorm momentum is the one its classifier's backbone trained with:
    fast from scratch, Keras's default when the classifier starts from a weights file."""
    from brain_tumor.ml.models.classifier import (
        SCRATCH_BN_MOMENTUM,
        build_classifier,
        get_backbone,
    )
    from brain_tumor.ml.models.segmenter import build_backbone_segmenter

    weights = None
    if pretrained:
        weights = tmp_path / "tiny.weights.h5"
        get_backbone(build_classifier(SIZE, backbone="tiny", dense_units=8)).save_weights(weights)
    classifier = build_classifier(SIZE, weights=weights, backbone="tiny", dense_units=8)
    segmenter = build_backbone_segmenter(SIZE, "tiny", pretrained=pretrained, base_filters=4)

    def momenta(model: keras.Model) -> dict[str, float]:
        return {layer.name: layer.momentum for layer in get_backbone(model).layers
                if isinstance(layer, keras.layers.BatchNormalization)}

    expected = 0.99 if pretrained else SCRATCH_BN_MOMENTUM
    assert momenta(segmenter) == momenta(classifier)
    assert set(momenta(segmenter).values()) == {expected}
