"""MACs counted from a Keras model's layers, against published and profiled figures."""

from __future__ import annotations

import keras
import pytest

from brain_tumor.ml.flops import layer_macs, model_flops, model_macs
from brain_tumor.ml.models import build_classifier, build_segmenter

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

#: Keras' ResNet50 is v1 (stride in the first 1x1 convolution of a stage): 3.86e9 MACs at 224
#: px, the paper's "3.8 x 10^9 FLOPs" (multiply-adds). torchvision's v1.5 (stride in the 3x3
#: convolution) is the often quoted 4.1e9.
RESNET50_224_MACS = 3.86e9


def test_resnet50_at_224_px_is_the_published_figure():
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))

    assert model_macs(model) == pytest.approx(RESNET50_224_MACS, rel=0.01)
    assert model_macs(model) == pytest.approx(3.8e9, rel=0.03)


def test_the_project_models_at_128_px():
    classifier = build_classifier(128)
    resnet_trunk = keras.applications.ResNet50(weights=None, include_top=False,
                                               input_shape=(128, 128, 3))

    # the backbone at 128 px plus a 2048 x 256 and a 256 x 1 dense head
    assert model_macs(classifier) == model_macs(resnet_trunk) + 2048 * 256 + 256
    assert model_macs(classifier) == pytest.approx(1.26e9, rel=0.01)
    assert model_macs(build_segmenter(128, base_filters=16, depth=4)) == pytest.approx(
        0.758e9, rel=0.01)
    assert model_flops(classifier) == 2 * model_macs(classifier)


def test_layer_counts_by_hand():
    inputs = keras.Input((8, 8, 4))
    conv = keras.layers.Conv2D(6, 3, padding="same")
    up = keras.layers.Conv2DTranspose(2, 2, strides=2)
    depthwise = keras.layers.DepthwiseConv2D(3, padding="same")
    dense = keras.layers.Dense(5)
    x = conv(inputs)
    x = up(x)
    x = depthwise(x)
    dense(keras.layers.Flatten()(x))

    assert layer_macs(conv) == 8 * 8 * 6 * 3 * 3 * 4
    assert layer_macs(up) == 8 * 8 * 6 * 2 * 2 * 2
    assert layer_macs(depthwise) == 16 * 16 * 2 * 3 * 3
    assert layer_macs(dense) == 16 * 16 * 2 * 5


def test_unknown_input_sizes_are_refused():
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(2, 3)])

    with pytest.raises(ValueError, match="fixed input sizes"):
        model_macs(model)
