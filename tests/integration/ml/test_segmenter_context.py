"""2.5D (``seg_context``): the segmenter reads each slice with its neighbours' FLAIR, in
training, evaluation and scoring alike; scoring builds the neighbours per study, so studies
packed into one engine call never lend each other slices."""

import numpy as np
import pytest
from support import own_dataset

from brain_tumor import steps
from brain_tumor.evaluation.report import model_card
from brain_tumor.evaluation.run import evaluate_model_version
from brain_tumor.ml.context import grouped_context
from brain_tumor.ml.inputs import for_model, load_arrays
from brain_tumor.ml.predict import load_model_version, predict_dataset
from brain_tumor.scoring.engines import KerasEngine, load_engine
from brain_tumor.settings import SettingsError, load_settings
from brain_tumor.store.modelstore import ModelStore


@pytest.fixture(scope="module")
def context_model(trained, tmp_path_factory):
    wide, dataset = own_dataset(trained[0], "segmenter-context",
                                tmp_path_factory.mktemp("context-home"), seg_context=1,
                                epochs=1, seg_epochs=1)
    return wide, steps.train(wide, dataset, verbose=0)


def test_training_evaluation_and_card_use_the_neighbours(context_model):
    settings, made = context_model
    store = steps.open_store(settings)
    assert made["seg_context"] == 1
    model = load_model_version(store, settings, made["model_version"])
    assert model.segmenter.inputs[0].shape[1:] == (32, 32, 5)
    assert model.classifier.inputs[0].shape[1:] == (32, 32, 3)
    test = for_model(load_arrays(store, settings, made["dataset_version"], 32),
                     made).subset("test")
    np.testing.assert_array_equal(
        test.segmenter_images(), grouped_context(test.images, test.patient_ids, 1))
    prob, maps = predict_dataset(model, test, settings.batch_size)
    assert maps.shape == (len(test), 32, 32) and prob.shape == (len(test),)
    metrics = evaluate_model_version(store, settings, made["model_version"])
    assert metrics["counts"]["slices"] == len(test)
    card = model_card(metrics, model_version=made["model_version"],
                      dataset_version=made["dataset_version"],
                      config=ModelStore(store, settings).record(made["model_version"]))
    assert "2.5D: each slice with the FLAIR of 1 neighbouring slice on each side" in card


@pytest.mark.parametrize("engine", ["keras", "onnx"])
def test_scoring_builds_the_neighbours_per_study(context_model, engine):
    settings, made = context_model
    store = steps.open_store(settings)
    data = load_arrays(store, settings, made["dataset_version"], 32).subset("test")
    ids = sorted(set(data.patient_ids.tolist()))[:2]
    studies = [list(data.images[data.patient_ids == pid]) for pid in ids]
    scorer = (KerasEngine(load_model_version(store, settings, made["model_version"]))
              if engine == "keras" else
              load_engine(store, settings.model_copy(update={"engine": "onnx"}),
                          made["model_version"]))
    packed = scorer.predict_studies(studies)
    for study, together in zip(studies, packed, strict=True):
        alone = scorer.predict(study)
        np.testing.assert_allclose(together.maps, alone.maps, atol=1e-5)
    # what the segmenter is given: the study's own slices, neighbours included
    model = load_model_version(store, settings, made["model_version"])
    first = np.asarray(studies[0], np.float32)
    expected = model.segmenter.predict(grouped_context(first, np.zeros(len(first)), 1),
                                       verbose=0)[..., 0]
    np.testing.assert_allclose(packed[0].maps, expected, atol=1e-4)


def test_the_backbone_encoder_cannot_read_neighbours():
    with pytest.raises(SettingsError, match="seg_context 1 needs seg_encoder 'unet'"):
        load_settings(env={}, seg_encoder="backbone", seg_context=1)
