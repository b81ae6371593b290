"""Training end to end on synthetic data: a published, reloadable, idempotent model version."""

import importlib.metadata
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from support import own_dataset

from brain_tumor import steps
from brain_tumor.evaluation.metrics import choose_threshold
from brain_tumor.ml.inputs import load_arrays
from brain_tumor.ml.predict import load_model_version, predict_slices
from brain_tumor.ml.train import model_version_id, warmup_schedule
from brain_tumor.store.modelstore import ModelStore


def test_model_version_is_published_whole(trained):
    settings, record = trained
    store = steps.open_store(settings)
    models = ModelStore(store, settings)
    keys = {o.key.split("/", 2)[2] for o in store.list(f"models/{record['model_version']}/")}
    assert {"classifier.keras", "segmenter.keras", "config.json", "history.json", "model.json",
            "classifier_history.csv", "segmenter_history.csv"} <= keys
    config = json.loads(store.get(models.key(record["model_version"], "config.json")))
    assert config["dataset_version"] == record["dataset_version"]
    assert config["training"]["backbone"] == "tiny" and config["code_version"]
    assert config["settings"]["s3_secret_access_key"] == "***"
    assert 1 <= record["best_epochs"]["classifier"] <= settings.epochs
    assert record["model_version"] == model_version_id(record["dataset_version"], settings)
    assert models.versions() == [record["model_version"]]


def test_threshold_comes_from_validation_and_reload_predicts_the_same(trained):
    settings, record = trained
    store = steps.open_store(settings)
    model = load_model_version(store, settings, record["model_version"])
    val = load_arrays(store, settings, record["dataset_version"], 32).subset("val")
    prob = model.classifier.predict(val.images.astype(np.float32), verbose=0).reshape(-1)
    assert choose_threshold(val.labels, prob, settings.threshold_rule) == pytest.approx(
        record["threshold"], abs=1e-6)
    again = load_model_version(store, settings, record["model_version"])
    out1 = predict_slices(model, list(val.images[:4]))
    out2 = predict_slices(again, list(val.images[:4]))
    np.testing.assert_array_equal(out1.prob, out2.prob)
    assert all(m.shape == (32, 32) for m in out1.masks)
    for lab, mask, geo in zip(out1.label, out1.masks, out1.geometry, strict=True):
        assert geo["area"] == int(mask.sum())
        assert lab == 1 or geo["area"] == 0  # a tumor-free label never carries a mask


def test_training_again_is_a_no_op(trained, monkeypatch):
    settings, record = trained
    import brain_tumor.ml.train as train_mod

    monkeypatch.setattr(train_mod, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
    again = steps.train(settings, record["dataset_version"])
    assert again["model_version"] == record["model_version"]


def test_crash_before_model_json_leaves_nothing_visible(trained, monkeypatch):
    settings, record = trained
    store = steps.open_store(settings)
    models = ModelStore(store, settings)
    crashed = settings.model_copy(update={"epochs": 1, "seg_epochs": 1})
    version = model_version_id(record["dataset_version"], crashed)
    real_put_json = type(store).put_json

    def crash(self, key, value, new=False):
        if key.endswith("model.json"):
            raise OSError("simulated crash")
        return real_put_json(self, key, value, new=new)

    monkeypatch.setattr(type(store), "put_json", crash)
    with pytest.raises(OSError, match="simulated crash"):
        steps.train(crashed, record["dataset_version"], verbose=0)
    assert list(store.list(f"models/{version}/"))  # files were uploaded ...
    assert not models.exists(version) and version not in models.versions()  # ... yet invisible
    monkeypatch.undo()
    assert steps.train(crashed, record["dataset_version"], verbose=0)["model_version"] == version
    assert models.exists(version)


def test_training_needs_a_split(make_settings, tmp_path):
    from brain_tumor.devtools.synth import SynthSpec, make_export
    from brain_tumor.ingest.exports import upload_export

    settings = make_settings()
    root = make_export(tmp_path / "e", SynthSpec(patients=4, slices=2, size=32)).root
    upload_export(steps.open_store(settings), settings, root, export_id="e")
    steps.ingest(settings, ["e"])
    with pytest.raises(Exception, match="no split yet"):
        steps.train(settings)


def test_warmup_then_leaves_the_rate_to_plateau_reduction():
    sched = warmup_schedule(1e-3, 2)
    assert sched(0, 0.0) == pytest.approx(1e-3 / 3) and sched(2, 5e-4) == pytest.approx(1e-3)
    assert sched(5, 2.5e-4) == 2.5e-4


def test_trains_under_the_jax_backend(trained, tmp_path):
    from brain_tumor.settings import settings_to_env

    jax_settings, dataset = own_dataset(trained[0], "train-jax", tmp_path / "jax",
                                        keras_backend="jax", epochs=1, seg_epochs=1)
    env = {**os.environ, **settings_to_env(jax_settings), "KERAS_BACKEND": "jax"}
    code = ("import sys, json; from brain_tumor.cli import main; "
            "sys.exit(main(['--json', 'train']))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    made = json.loads(out.stdout[out.stdout.index("{"):])
    assert made["keras_backend"] == "jax" and made["dataset_version"] == dataset
    assert ModelStore(steps.open_store(jax_settings), jax_settings).exists(made["model_version"])
    assert "classifier epoch 1/1: loss " in out.stderr  # progress on stderr, stdout stays JSON
    check = ("import os, sys; os.environ['KERAS_BACKEND']='jax'; "
             "import brain_tumor.ml.inputs, brain_tumor.ml.models, brain_tumor.ml.train; "
             "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", check], env=env, check=False).returncode == 0


def test_pretrained_weights_train_in_two_phases(trained, tmp_path):
    """With a weights file: frozen-backbone phase, then fine-tuning of the top stage."""
    import keras

    from brain_tumor.ml.models.classifier import build_classifier, get_backbone

    weights = tmp_path / "resnet50.weights.h5"
    get_backbone(build_classifier(32, None, "resnet50")).save_weights(str(weights))
    tuned, dataset = own_dataset(
        trained[0], "train-pretrained", tmp_path / "home", backbone="resnet50",
        weights=str(weights), epochs=1, fine_tune_epochs=1, seg_epochs=1, max_train_slices=16,
        batch_size=8)
    made = steps.train(tuned, dataset, verbose=0)
    store = steps.open_store(tuned)
    models = ModelStore(store, tuned)
    keys = {o.key.rsplit("/", 1)[1] for o in store.list(models.key(made["model_version"]) + "/")}
    assert "classifier_finetune_history.csv" in keys
    history = json.loads(store.get(models.key(made["model_version"], "history.json")))
    assert len(history["classifier"]["loss"]) == 2  # one frozen epoch + one fine-tuning epoch
    clf = keras.saving.load_model(models.fetch(made["model_version"]) / "classifier.keras")
    assert clf.get_layer("preprocess").__class__.__name__ == "CaffePreprocessing"


def _package_copy(tmp_path, name, edit=None):
    """A copy of the brain_tumor sources (Python files only), with one file edited."""
    import shutil
    from pathlib import Path

    import brain_tumor

    root = tmp_path / name / "brain_tumor"
    shutil.copytree(Path(brain_tumor.__file__).parent, root,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if edit is not None:
        path = root / edit
        path.write_text(path.read_text() + "\n# an edit\n")
    return root


def test_model_version_follows_the_training_code(trained, tmp_path, monkeypatch):
    """A changed training source gives a new model version id; an unrelated module does not."""
    import brain_tumor.ml.train as train_mod
    from brain_tumor.store.datasets import code_version
    from brain_tumor.store.modelstore import ModelNotFound

    settings, record = trained
    assert record["code_version"] == code_version()
    assert code_version().startswith(importlib.metadata.version("brain-tumor") + "+")
    same = _package_copy(tmp_path, "same")
    assert code_version(same) == code_version()  # the hash is of content and relative paths
    versions = {}
    for edit in ("ml/train.py", "ml/models/segmenter.py", "ingest/imaging.py",
                 "evaluation/metrics.py", "evaluation/tuning.py", "scoring/postprocess.py",
                 "scoring/overlay.py", "store/registry.py", "cli.py"):
        root = _package_copy(tmp_path, edit.replace("/", "-"), edit)
        monkeypatch.setattr(train_mod, "code_version", lambda root=root: code_version(root))
        versions[edit] = model_version_id(record["dataset_version"], settings)
    changed = {e for e, v in versions.items() if v != record["model_version"]}
    assert changed == {"ml/train.py", "ml/models/segmenter.py", "ingest/imaging.py",
                       "evaluation/metrics.py", "evaluation/tuning.py", "scoring/postprocess.py"}
    assert len({versions[e] for e in changed}) == len(changed)

    # the facade the DAG calls after training follows the code version too
    monkeypatch.setattr(train_mod, "code_version", lambda: code_version(same))
    assert steps.expected_model_version(settings, record["dataset_version"]) == \
        record["model_version"]
    edited = _package_copy(tmp_path, "edited", "ml/inputs.py")
    monkeypatch.setattr(train_mod, "code_version", lambda: code_version(edited))
    retrained = model_version_id(record["dataset_version"], settings)
    assert retrained != record["model_version"]
    with pytest.raises(ModelNotFound, match=retrained):
        steps.expected_model_version(settings, record["dataset_version"])


def test_code_version_sources_are_listed_and_hashed_in_a_stable_order(tmp_path):
    from brain_tumor.store.datasets import CODE_SOURCES, code_version

    root = _package_copy(tmp_path, "copy")
    assert code_version(root, CODE_SOURCES) == code_version(root, tuple(reversed(CODE_SOURCES)))
    assert code_version(root, ("ml",)) != code_version(root, CODE_SOURCES)
    with pytest.raises(FileNotFoundError, match="nowhere.py"):
        code_version(root, ("nowhere.py",))


def test_version_flag_prints_the_package_and_code_versions(capsys):
    from brain_tumor.cli import main
    from brain_tumor.store.datasets import code_version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == \
        f"brain-tumor {importlib.metadata.version('brain-tumor')} (code version {code_version()})\n"
