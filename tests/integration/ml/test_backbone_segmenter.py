"""Training with ``seg_encoder`` 'backbone': the segmenter is a U-Net decoder on the classifier's
backbone, started from the trained classifier, exported and scored like the plain U-Net, and the
model version and card say which segmenter it is."""

import numpy as np
import pytest
from support import own_dataset

from brain_tumor import steps
from brain_tumor.evaluation.report import model_card
from brain_tumor.ml.inputs import load_arrays
from brain_tumor.ml.models import build_classifier
from brain_tumor.ml.predict import load_model_version
from brain_tumor.ml.train import build_segmenter_for, model_version_id
from brain_tumor.scoring.engines import load_engine
from brain_tumor.store.modelstore import ModelStore


def test_segmenter_on_the_classifier_backbone_trains_exports_and_scores(trained, tmp_path):
    shared, dataset = own_dataset(trained[0], "backbone-segmenter", tmp_path / "home",
                                  seg_encoder="backbone", epochs=1, seg_epochs=1)
    assert model_version_id(dataset, shared) != model_version_id(
        dataset, shared.model_copy(update={"seg_encoder": "unet"}))
    made = steps.train(shared, dataset, verbose=0)
    store = steps.open_store(shared)
    models = ModelStore(store, shared)
    assert made["seg_encoder"] == "backbone"
    assert models.record(made["model_version"])["seg_encoder"] == "backbone"
    keys = {o.key.rsplit("/", 1)[1] for o in store.list(models.key(made["model_version"]) + "/")}
    assert {"segmenter.keras", "segmenter.onnx", "classifier.onnx"} <= keys

    model = load_model_version(store, shared, made["model_version"])
    assert model.segmenter.get_layer("backbone").get_layer("tiny_top_conv") is not None
    val = load_arrays(store, shared, dataset, 32).subset("val")
    images = list(val.images[:5])
    keras_maps = model.segmenter.predict(val.images[:5].astype(np.float32), verbose=0)[..., 0]
    onnx = load_engine(store, shared.model_copy(update={"engine": "onnx"}), made["model_version"])
    np.testing.assert_allclose(onnx.predict(images).maps, keras_maps, atol=1e-4)

    card = model_card({"threshold": made["threshold"]}, model_version=made["model_version"],
                      dataset_version=made["dataset_version"], config=models.record(
                          made["model_version"]))
    assert "localization: U-Net decoder on the classifier's tiny backbone" in card


def test_backbone_segmenter_needs_the_trained_classifier(trained):
    settings, _ = trained
    shared = settings.model_copy(update={"seg_encoder": "backbone"})
    with pytest.raises(ValueError, match="no classifier was given"):
        build_segmenter_for(shared)
    classifier = build_classifier(32, backbone="tiny", dense_units=8)
    segmenter = build_segmenter_for(shared, classifier)
    np.testing.assert_array_equal(
        segmenter.get_layer("backbone").get_layer("tiny_top_conv").get_weights()[0],
        classifier.get_layer("backbone").get_layer("tiny_top_conv").get_weights()[0])
