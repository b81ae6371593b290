"""CPU inference form of a model version: its classifier and segmenter as ONNX graphs.

``classifier.onnx`` takes the raw 0..255 float batch ``image`` (N x S x S x 3, the input the
``.keras`` model takes) and gives ``probability`` (N x 1) and ``features`` (N x F, the pooled
backbone features the dense head reads); ``segmenter.onnx`` takes ``image`` too (N x S x S x 3,
or 3 + 2k channels with k neighbouring slices a side, ``brain_tumor.ml.context``) and gives
``mask`` (N x S x S x 1).
Both lie beside the ``.keras`` files of the model version. Training writes them before it
publishes (``export_for_cpu``); ``ensure_exported`` adds them to a version published without.
An export is checked against the Keras models before it is kept (``EXPORT_TOLERANCE``).

Exporting needs Keras under the TensorFlow backend and ``tf2onnx``; reading an export
(``fetch_exported``) needs neither.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from brain_tumor.settings import Settings
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.storage import ObjectStore

log = logging.getLogger(__name__)

CLASSIFIER_ONNX = "classifier.onnx"
SEGMENTER_ONNX = "segmenter.onnx"
EXPORT_FILES = (CLASSIFIER_ONNX, SEGMENTER_ONNX)
INPUT_NAME = "image"
CLASSIFIER_OUTPUTS = ("probability", "features")
SEGMENTER_OUTPUTS = ("mask",)
#: the layer whose output is the classifier's feature vector (see models.classifier)
FEATURES_LAYER = "head_pool"
#: largest |ONNX - Keras| difference of a probability an export may show on the check batch
EXPORT_TOLERANCE = 1e-4
#: least share of mask pixels (cut at 0.5) an export must agree with Keras on
MASK_AGREEMENT = 0.999


class ExportMismatch(RuntimeError):
    """An exported graph does not give the Keras model's outputs."""


def features_layer(classifier: Any) -> Any:
    """The classifier's global pooling layer (its output feeds the dense head)."""
    import keras

    try:
        return classifier.get_layer(FEATURES_LAYER)
    except ValueError:
        pools = [layer for layer in classifier.layers if isinstance(
            layer, keras.layers.GlobalAveragePooling2D | keras.layers.GlobalMaxPooling2D)]
        if not pools:
            raise ValueError(f"classifier {classifier.name!r} has no {FEATURES_LAYER!r} layer "
                             "and no global pooling layer") from None
        return pools[-1]


def classifier_with_features(classifier: Any) -> Any:
    """A Keras model giving the classifier's probability and its pooled features."""
    import keras

    return keras.Model(classifier.inputs, [classifier.outputs[0],
                                           features_layer(classifier).output])


def _rename_outputs(path: Path, names: tuple[str, ...]) -> None:
    """Give the graph outputs of an ONNX file the given names, in order."""
    import onnx

    model = onnx.load(str(path))
    outputs = list(model.graph.output)
    if len(outputs) != len(names):
        raise ExportMismatch(f"{path.name}: expected {len(names)} outputs, received "
                             f"{[o.name for o in outputs]}")
    renames = {o.name: new for o, new in zip(outputs, names, strict=True)}
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for output in outputs:
        output.name = renames[output.name]
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_onnx(model: Any, path: Path, output_names: tuple[str, ...]) -> Path:
    """Write one Keras model (input N x S x S x 3 float32) as an ONNX file; return its path."""
    import keras

    _, size, _, channels = (int(d) if d is not None else None for d in model.inputs[0].shape)
    signature = [keras.InputSpec(shape=(None, size, size, channels), dtype="float32",
                                 name=INPUT_NAME)]
    partial = path.with_name(f".{path.name}.partial")
    model.export(str(partial), format="onnx", verbose=False, input_signature=signature)
    _rename_outputs(partial, output_names)
    partial.replace(path)
    return path


def check_export(classifier: Any, segmenter: Any, folder: Path, slices: int = 4,
                 seed: int = 0) -> dict[str, float]:
    """Compare the ONNX files in folder with the Keras models on random slices; raise if apart."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    size = int(classifier.inputs[0].shape[1])
    x = rng.uniform(0, 255, (slices, size, size, 3)).astype(np.float32)
    seg_x = rng.uniform(0, 255, (slices, *segmenter.inputs[0].shape[1:])).astype(np.float32)
    prob_k, feat_k = (np.asarray(a) for a in classifier_with_features(classifier)(x))
    mask_k = np.asarray(segmenter(seg_x))
    prob_o, feat_o = ort.InferenceSession(str(folder / CLASSIFIER_ONNX)).run(None, {INPUT_NAME: x})
    (mask_o,) = ort.InferenceSession(str(folder / SEGMENTER_ONNX)).run(None, {INPUT_NAME: seg_x})
    found = {"probability_max_abs": float(np.max(np.abs(prob_o - prob_k))),
             "features_max_abs": float(np.max(np.abs(feat_o - feat_k))),
             "mask_agreement": float(np.mean((mask_o >= 0.5) == (mask_k >= 0.5)))}
    if (feat_o.shape != feat_k.shape or found["probability_max_abs"] > EXPORT_TOLERANCE
            or found["mask_agreement"] < MASK_AGREEMENT):
        raise ExportMismatch(f"ONNX export disagrees with the Keras models: received {found}")
    return found


def export_models(classifier: Any, segmenter: Any, folder: Path) -> list[Path]:
    """Export both Keras models into folder, checked against them; return the files written."""
    paths = [export_onnx(classifier_with_features(classifier), folder / CLASSIFIER_ONNX,
                         CLASSIFIER_OUTPUTS),
             export_onnx(segmenter, folder / SEGMENTER_ONNX, SEGMENTER_OUTPUTS)]
    try:
        found = check_export(classifier, segmenter, folder)
    except ExportMismatch:
        for path in paths:
            path.unlink(missing_ok=True)
        raise
    log.info("exported the classifier and segmenter to ONNX in %s (check: %s)", folder, found)
    return paths


def export_for_cpu(classifier: Any, segmenter: Any, folder: Path) -> bool:
    """Export both models into folder; on failure log it and return False (Keras still scores)."""
    try:
        export_models(classifier, segmenter, folder)
    except Exception:  # an export is an optimisation: a failure must not stop a publication
        log.warning("ONNX export failed; this model version will be scored with Keras",
                    exc_info=True)
        return False
    return True


def fetch_exported(store: ObjectStore, settings: Settings, version: str) -> Path | None:
    """The local folder of the version's ONNX files (downloaded once); None if it has none."""
    models = ModelStore(store, settings)
    if not all(store.exists(models.key(version, name)) for name in EXPORT_FILES):
        return None
    folder = settings.home_dir / "models" / version
    missing = [name for name in EXPORT_FILES if not (folder / name).exists()]
    folder.mkdir(parents=True, exist_ok=True)
    for name in missing:
        partial = folder / f".{name}.partial"
        store.download_file(models.key(version, name), partial)
        partial.replace(folder / name)
    return folder


def ensure_exported(store: ObjectStore, settings: Settings, version: str) -> bool:
    """Add the ONNX files to a published model version that lacks them; True if it did."""
    from brain_tumor.ml.models import load_model

    models = ModelStore(store, settings)
    models.record(version)  # ModelNotFound for an unpublished version
    if all(store.exists(models.key(version, name)) for name in EXPORT_FILES):
        return False
    folder = models.fetch(version)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=folder) as tmp:
        paths = export_models(load_model(folder / "classifier.keras", compile=False),
                              load_model(folder / "segmenter.keras", compile=False), Path(tmp))
        for path in paths:
            store.upload_file(path, models.key(version, path.name))
            path.replace(folder / path.name)
    log.info("model version %s: ONNX export added", version)
    return True
