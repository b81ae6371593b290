"""Provenance: model.json and the model card state the backbone weights actually used, and the
quality benchmark takes the weights from --weights or BRAIN_TUMOR_WEIGHTS."""

import argparse
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from support import TINY_TRAINING

from brain_tumor import steps
from brain_tumor.devtools.synth import SynthSpec, make_export
from brain_tumor.evaluation.report import model_card
from brain_tumor.ingest.exports import upload_export
from brain_tumor.ml.models import build_classifier, get_backbone
from brain_tumor.ml.predict import load_model_version
from brain_tumor.ml.train import model_version_id, weights_provenance
from brain_tumor.store.modelstore import ModelStore

REPO = Path(__file__).resolve().parents[3]


def test_training_with_a_weights_file_says_so(make_settings, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    weights = tmp_path / "tiny_backbone.weights.h5"
    backbone = get_backbone(build_classifier(32, backbone="tiny", dense_units=8))
    backbone.save_weights(weights)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    settings = make_settings(**{**TINY_TRAINING, "epochs": 1, "seg_epochs": 1,
                                "fine_tune_epochs": 1, "weights": str(weights),
                                "intensity_norm": "volume_percentile"})
    store = steps.open_store(settings)
    store.ensure_bucket()
    root = make_export(tmp_path / "export", SynthSpec(patients=8, slices=4, size=32, seed=5)).root
    upload_export(store, settings, root, export_id="e1")
    steps.ingest(settings, ["e1"])
    steps.split(settings)
    record = steps.train(settings, verbose=0)

    assert record["weights"] == f"tiny_backbone.weights.h5 sha256:{sha}"
    assert record["intensity_norm"] == "volume_percentile"
    stored = ModelStore(store, settings).record(record["model_version"])
    assert stored["weights"] == record["weights"]
    card = model_card({"threshold": record["threshold"]}, model_version=record["model_version"],
                      dataset_version=record["dataset_version"], config=stored)
    assert f"Backbone weights: tiny_backbone.weights.h5 sha256:{sha}" in card
    # The file's weights are the ones trained from: the first block stays frozen throughout.
    model = load_model_version(store, settings, record["model_version"])
    trained = get_backbone(model.classifier).get_layer("tiny_block1_conv").get_weights()[0]
    np.testing.assert_array_equal(trained, backbone.get_layer("tiny_block1_conv").get_weights()[0])
    # The new training settings are part of the model version id.
    for change in ({"seg_tumor_fraction": 0.0}, {"seg_loss": "per_sample_dice"},
                   {"intensity_norm": "none"}):
        other = settings.model_copy(update=change)
        assert model_version_id(record["dataset_version"], other) != record["model_version"]


def test_weights_provenance_names():
    assert weights_provenance(None) == "none"
    assert weights_provenance("imagenet") == "imagenet"
    with pytest.raises(ValueError, match="weights file does not exist: '/no/such.h5'"):
        weights_provenance("/no/such.h5")


def _quality_module():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_benchmark_takes_weights_from_flag_then_environment(monkeypatch):
    quality = _quality_module()
    args = argparse.Namespace(profile="cpu", weights=None, set=None)
    monkeypatch.delenv("BRAIN_TUMOR_WEIGHTS", raising=False)
    assert "weights" not in quality.profile_settings(args)
    monkeypatch.setenv("BRAIN_TUMOR_WEIGHTS", "imagenet")
    assert quality.profile_settings(args)["weights"] == "imagenet"
    args.weights, args.set = "/data/resnet50.h5", ["intensity_norm=volume_percentile"]
    values = quality.profile_settings(args)
    assert values["weights"] == "/data/resnet50.h5"
    assert values["intensity_norm"] == "volume_percentile"
    assert values["seg_epochs"] > values["epochs"]  # the CPU budget goes to the U-Net
    args.set = ["nonsense"]
    with pytest.raises(SystemExit, match="NAME=VALUE, received 'nonsense'"):
        quality.profile_settings(args)
