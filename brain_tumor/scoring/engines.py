"""Inference engines: a loaded model version that predicts native-size slices (second seam).

``KerasEngine`` runs the stored ``.keras`` classifier and segmenter with Keras 3 (any backend).
``OnnxEngine`` runs the version's ONNX export (``brain_tumor.ml.export``) on the CPU with
OpenVINO (float32) or ONNX Runtime; loading it imports neither Keras nor TensorFlow. Both give
the classifier's pooled features beside the probabilities. Resizing to the model's input size
happens here, so every engine sees the same input. ``load_engine`` picks one by the ``engine``
setting.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from brain_tumor.ml.export import (
    CLASSIFIER_ONNX,
    INPUT_NAME,
    SEGMENTER_ONNX,
    classifier_with_features,
    fetch_exported,
)
from brain_tumor.ml.normalize import normalize_study, record_method
from brain_tumor.ml.predict import LoadedModel, to_model_input
from brain_tumor.scoring.contracts import InferenceEngine, RawPrediction
from brain_tumor.settings import Settings
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.storage import ObjectStore

log = logging.getLogger(__name__)


class KerasEngine:
    """Both Keras models of a model version, predicting in batches."""

    def __init__(self, model: LoadedModel, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, received {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.name = "keras"
        self._classifier = classifier_with_features(model.classifier)

    @property
    def version(self) -> str:
        """The model version id."""
        return self.model.version

    @property
    def record(self) -> dict[str, Any]:
        """The model version's model.json."""
        return self.model.record

    @property
    def threshold(self) -> float:
        """The decision threshold chosen on the model's validation patients."""
        return self.model.threshold

    def predict(self, images: list[np.ndarray]) -> RawPrediction:
        """Probabilities, probability maps (model size) and features of native-size slices."""
        x = study_input(images, self.model.image_size, record_method(self.model.record))
        prob, features = self._classifier.predict(x, batch_size=self.batch_size, verbose=0)
        maps = np.asarray(self.model.segmenter.predict(x, batch_size=self.batch_size,
                                                       verbose=0))[..., 0]
        return RawPrediction(np.asarray(prob).reshape(-1).astype(np.float64), maps,
                             np.asarray(features, np.float32))


def study_input(images: list[np.ndarray], size: int, norm: str) -> np.ndarray:
    """One study's native uint8 slices as the model's float input: resized, then normalized
    per study as the model version was trained (``intensity_norm``; resizing first, as
    training does)."""
    x = to_model_input(images, size)
    if norm == "none":
        return x
    return np.asarray(normalize_study(x.astype(np.uint8), norm), np.float32)


RUNTIMES = ("openvino", "onnxruntime")


def session_options(threads: int) -> Any:
    """ONNX Runtime session options: every graph optimisation, ``threads`` (0: ORT default)."""
    import onnxruntime as ort

    if threads < 0:
        raise ValueError(f"threads must be 0 (default) or positive, received {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def openvino_config(threads: int) -> dict[str, str]:
    """OpenVINO CPU settings: float32 arithmetic (not its bfloat16 default), ``threads``."""
    if threads < 0:
        raise ValueError(f"threads must be 0 (default) or positive, received {threads}")
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def openvino_available() -> bool:
    """Whether the OpenVINO runtime can be imported here."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def compile_graph(path: Path, runtime: str, threads: int) -> Any:
    """An ONNX file ready to run on the CPU: a callable from ``{input: array}`` to outputs."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), session_options(threads),
                                       providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)
    if runtime == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", openvino_config(threads))
        request = compiled.create_infer_request()
        outputs = list(compiled.outputs)
        return lambda feeds: [np.array(request.infer(feeds)[o]) for o in outputs]
    raise ValueError(f"runtime must be one of {RUNTIMES}, received {runtime!r}")


class OnnxEngine:
    """Both models of a model version as ONNX graphs on the CPU (OpenVINO or ONNX Runtime)."""

    def __init__(self, version: str, record: dict[str, Any], folder: Path, batch_size: int = 32,
                 threads: int = 0, runtime: str = "onnxruntime") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, received {batch_size}")
        self.version = version
        self.record = record
        self.batch_size = batch_size
        self.threads = threads
        self.name = runtime
        self.classifier = compile_graph(folder / CLASSIFIER_ONNX, runtime, threads)
        self.segmenter = compile_graph(folder / SEGMENTER_ONNX, runtime, threads)

    @property
    def image_size(self) -> int:
        """The models' input size."""
        return int(self.record["image_size"])

    @property
    def threshold(self) -> float:
        """The decision threshold chosen on the model's validation patients."""
        return float(self.record["threshold"])

    def predict(self, images: list[np.ndarray]) -> RawPrediction:
        """Probabilities, probability maps (model size) and features of native-size slices."""
        x = study_input(images, self.image_size, record_method(self.record))
        probs, features, maps = [], [], []
        for start in range(0, len(x), self.batch_size):
            batch = {INPUT_NAME: x[start:start + self.batch_size]}
            prob, feat = self.classifier(batch)
            probs.append(prob.reshape(-1))
            features.append(feat)
            maps.append(self.segmenter(batch)[0][..., 0])
        return RawPrediction(np.concatenate(probs).astype(np.float64), np.concatenate(maps),
                             np.concatenate(features))


def worker_has_gpu() -> bool:
    """Whether an NVIDIA GPU is visible to this process (device files, CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def load_engine(store: ObjectStore, settings: Settings,
                version: str) -> KerasEngine | OnnxEngine:
    """Load a model version as the engine the ``engine`` setting calls for.

    ``onnx`` / ``openvino``: the version's ONNX export on ONNX Runtime / OpenVINO; ``auto``: the
    export on OpenVINO where installed, else ONNX Runtime, unless the worker has a GPU; ``keras``:
    the ``.keras`` models. A version without an export is scored with Keras (logged).
    """
    from brain_tumor.ml import predict

    choice = settings.engine
    if choice == "auto" and worker_has_gpu():
        log.info("model version %s: GPU present, scoring with Keras", version)
    elif choice != "keras":
        runtime = {"onnx": "onnxruntime", "openvino": "openvino"}.get(
            choice, "openvino" if openvino_available() else "onnxruntime")
        record = ModelStore(store, settings).record(version)
        folder = fetch_exported(store, settings, version)
        if folder is not None:
            engine = OnnxEngine(version, record, folder, settings.batch_size,
                                settings.engine_threads, runtime)
            log.info("model version %s: scoring its ONNX export with %s (threads %s)", version,
                     runtime, settings.engine_threads or "default")
            return engine
        log.warning("model version %s has no ONNX export (brain_tumor.ml.export."
                    "ensure_exported adds it); scoring with Keras", version)
    return KerasEngine(predict.load_model_version(store, settings, version), settings.batch_size)


def inference_engine(model: LoadedModel | InferenceEngine, settings: Settings) -> InferenceEngine:
    """The engine that runs a model version for scoring: a loaded engine, or Keras models."""
    if isinstance(model, LoadedModel):
        return KerasEngine(model, settings.batch_size)
    return model
