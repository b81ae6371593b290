"""Inference engines: a loaded model version that predicts native-size slices (second seam).

``KerasEngine`` runs the stored ``.keras`` classifier and segmenter with Keras 3 (any backend).
``OnnxEngine`` runs the version's ONNX export (``brain_tumor.ml.export``) on the CPU with
OpenVINO (float32 or bfloat16 arithmetic, ``engine_precision``) or ONNX Runtime (float32 only);
loading it imports neither Keras nor TensorFlow. Both give the classifier's pooled features
beside the probabilities. Resizing to the model's input size and the per-study normalization
happen here, so every engine sees the same input.

``predict_studies`` predicts several studies in one go: each study is resized and normalized on
its own, then their slices are cut into batches that span study boundaries (``batch_bounds``:
as few batches as ``batch_size`` allows, of near-equal sizes), and the results are split back
per study. ``load_engine`` picks an engine by the ``engine`` setting.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from brain_tumor.ml.context import grouped_context, record_context
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
        return self.predict_studies([images])[0]

    def predict_studies(self, studies: list[list[np.ndarray]]) -> list[RawPrediction]:
        """``predict`` of several studies, their slices batched together."""
        x = studies_input(studies, self.model.image_size, record_method(self.model.record))
        prob, features = self._classifier.predict(x, batch_size=self.batch_size, verbose=0)
        seg_x = studies_context(x, studies, self.model.record)
        maps = np.asarray(self.model.segmenter.predict(seg_x, batch_size=self.batch_size,
                                                       verbose=0))[..., 0]
        return split_studies(RawPrediction(np.asarray(prob).reshape(-1).astype(np.float64), maps,
                                           np.asarray(features, np.float32)),
                             [len(images) for images in studies])


def study_input(images: list[np.ndarray], size: int, norm: str) -> np.ndarray:
    """One study's native uint8 slices as the model's float input: resized, then normalized
    per study as the model version was trained (``intensity_norm``; resizing first, as
    training does)."""
    x = to_model_input(images, size)
    if norm == "none":
        return x
    return np.asarray(normalize_study(x.astype(np.uint8), norm), np.float32)


def studies_input(studies: list[list[np.ndarray]], size: int, norm: str) -> np.ndarray:
    """Several studies' model input, one after the other, each normalized on its own."""
    if not studies or not all(studies):
        raise ValueError(f"every study needs at least one slice, received slice counts "
                         f"{[len(images) for images in studies]}")
    return np.concatenate([study_input(images, size, norm) for images in studies])


def studies_context(x: np.ndarray, studies: list[list[np.ndarray]],
                    record: dict[str, Any]) -> np.ndarray:
    """The segmenter's input of ``studies_input``'s rows: each study's neighbouring slices added
    on its own (``seg_context`` of model.json; 0: ``x`` itself)."""
    context = record_context(record)
    if not context:
        return x
    owner = np.repeat(np.arange(len(studies)), [len(images) for images in studies])
    return grouped_context(x, owner, context)


def split_studies(raw: RawPrediction, counts: list[int]) -> list[RawPrediction]:
    """The predictions of consecutive studies of ``counts`` slices each, split back per study."""
    if sum(counts) != len(raw.prob):
        raise ValueError(f"slice counts {counts} do not add up to the {len(raw.prob)} predicted")
    edges = np.cumsum([0, *counts])
    return [RawPrediction(raw.prob[a:b], raw.maps[a:b],
                          None if raw.features is None else raw.features[a:b])
            for a, b in zip(edges[:-1], edges[1:], strict=True)]


def batch_bounds(total: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch of ``total`` slices: as few batches as ``batch_size`` allows,
    of near-equal sizes (40 slices at 32: 20 + 20, not 32 + 8)."""
    if batch_size < 1 or total < 0:
        raise ValueError(f"batch_size must be positive and total >= 0, received "
                         f"batch_size={batch_size}, total={total}")
    count = -(-total // batch_size)
    edges = [round(i * total / count) for i in range(count + 1)] if count else [0]
    return list(zip(edges[:-1], edges[1:], strict=True))


RUNTIMES = ("openvino", "onnxruntime")
PRECISIONS = ("f32", "bf16")


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


def check_precision(runtime: str, precision: str) -> None:
    """Raise unless ``runtime`` can compute at ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"engine precision must be one of {PRECISIONS}, received {precision!r}")
    if precision != "f32" and runtime != "openvino":
        raise ValueError(f"the {runtime} runtime computes in float32 only (f32); precision "
                         f"{precision!r} needs the openvino engine")


def openvino_config(threads: int, precision: str = "f32") -> dict[str, str]:
    """OpenVINO CPU settings: one inference at a time (LATENCY), arithmetic at ``precision``
    (f32 explicitly, not the CPU plugin's bf16 default on bf16-capable cores), ``threads``."""
    if threads < 0:
        raise ValueError(f"threads must be 0 (default) or positive, received {threads}")
    check_precision("openvino", precision)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def openvino_available() -> bool:
    """Whether the OpenVINO runtime can be imported here."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def compile_graph(path: Path, runtime: str, threads: int,
                  precision: str = "f32") -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """An ONNX file ready to run on the CPU: a callable from ``{input: array}`` to outputs."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, received {runtime!r}")
    check_precision(runtime, precision)
    if runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), session_options(threads),
                                       providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", openvino_config(threads, precision))
    request = compiled.create_infer_request()
    outputs = list(compiled.outputs)
    return lambda feeds: [np.array(request.infer(feeds)[o]) for o in outputs]


class OnnxEngine:
    """Both models of a model version as ONNX graphs on the CPU (OpenVINO or ONNX Runtime)."""

    def __init__(self, version: str, record: dict[str, Any], folder: Path, batch_size: int = 32,
                 threads: int = 0, runtime: str = "onnxruntime", precision: str = "f32") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, received {batch_size}")
        self.version = version
        self.record = record
        self.batch_size = batch_size
        self.threads = threads
        self.name = runtime
        self.precision = precision
        self.classifier = compile_graph(folder / CLASSIFIER_ONNX, runtime, threads, precision)
        self.segmenter = compile_graph(folder / SEGMENTER_ONNX, runtime, threads, precision)

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
        return self.predict_studies([images])[0]

    def predict_studies(self, studies: list[list[np.ndarray]]) -> list[RawPrediction]:
        """``predict`` of several studies, in batches that span study boundaries."""
        x = studies_input(studies, self.image_size, record_method(self.record))
        seg_x = studies_context(x, studies, self.record)
        probs, features, maps = [], [], []
        for start, stop in batch_bounds(len(x), self.batch_size):
            prob, feat = self.classifier({INPUT_NAME: x[start:stop]})
            probs.append(prob.reshape(-1))
            features.append(feat)
            maps.append(self.segmenter({INPUT_NAME: seg_x[start:stop]})[0][..., 0])
        raw = RawPrediction(np.concatenate(probs).astype(np.float64),
                            np.concatenate(maps).astype(np.float32),
                            np.concatenate(features).astype(np.float32))
        return split_studies(raw, [len(images) for images in studies])


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
        check_precision(runtime, settings.engine_precision)
        record = ModelStore(store, settings).record(version)
        folder = fetch_exported(store, settings, version)
        if folder is not None:
            engine = OnnxEngine(version, record, folder, engine_batch_size(settings),
                                settings.engine_threads, runtime, settings.engine_precision)
            log.info("model version %s: scoring its ONNX export with %s (%s, batches of %d, "
                     "threads %s)", version, runtime, settings.engine_precision,
                     engine.batch_size, settings.engine_threads or "default")
            return engine
        log.warning("model version %s has no ONNX export (brain_tumor.ml.export."
                    "ensure_exported adds it); scoring with Keras", version)
    if settings.engine_precision != "f32":
        raise ValueError(f"engine_precision {settings.engine_precision!r} needs the ONNX export "
                         f"on OpenVINO; model version {version} would be scored with Keras (f32)")
    return KerasEngine(predict.load_model_version(store, settings, version), settings.batch_size)


def engine_batch_size(settings: Settings) -> int:
    """Slices per model call of the ONNX engine: ``engine_batch_size``, else ``batch_size``."""
    return settings.engine_batch_size or settings.batch_size


def inference_engine(model: LoadedModel | InferenceEngine, settings: Settings) -> InferenceEngine:
    """The engine that runs a model version for scoring: a loaded engine, or Keras models."""
    if isinstance(model, LoadedModel):
        return KerasEngine(model, settings.batch_size)
    return model
