"""Scoring benchmark on the real LGG data: every patient scored as an incoming study.

  python bench/scoring.py DATA [--engine openvino|onnx|keras] [--precision f32|bf16]
                               [--threads N] [--batch-size B] [--pack-slices P] [--home DIR]
                               [--model-version M] [--naive-studies 10] [--json OUT]

DATA is the LGG archive (lgg-kaggle_3m-dev81.tar.xz), an unpacked kaggle_3m folder, or
``synthetic`` (a few small generated patients: a smoke run of the benchmark itself, figures
meaningless). The benchmark starts its own SeaweedFS server under --home (the quality
benchmark's port settings: BENCH_S3_PORT, BENCH_S3_PORT_BASE), then:

1. **model**: --model-version if it is in that server (e.g. the one `bench/quality.py run
   --profile cpu --home H` left), else a *speed-only* model of the same architecture (ResNet50 +
   U-Net at 128x128, the CPU profile) trained for one short epoch on the data. Its quality
   is not meaningful; its speed is the CPU profile's. For --engine openvino or onnx the
   version's ONNX export is made first if it lacks one.
2. **studies**: each patient folder is uploaded (slices only) to ``incoming/<patient>/``.
3. **limit**: the best matrix-multiply rate at the engine's precision on the threads it uses
   (f32 on OpenVINO and ONNX Runtime: a MatMul-only ONNX graph run by each, the better one
   kept; bf16: that graph on OpenVINO at bf16, the only runtime that computes it; Keras: a
   TensorFlow float32 matmul), the most FLOP/s the models could get here. The models' FLOPs per
   slice come from ``brain_tumor.ml.flops``.
4. **batched**: the scoring pipeline on every study with the engine loaded once — what a
   scoring task does (``ScoringPipeline.score_many``): each slice read once (parallel GETs,
   studies read ahead), consecutive studies predicted together until they hold --pack-slices
   slices (batches of --batch-size spanning study boundaries; 0: one study per call), each
   call's outputs written in the background while the next call is in the model. Slices/s
   end to end, each also as a share of the limit, and the time split between reading, model
   and writing (writing overlaps the model: the split adds up to more than the wall time;
   ``model_only_beside_writes`` is the model's rate while the writes share the cores).
   **Models alone** (``model_only``): every study's slices once more through the engine,
   grouped as the pipeline groups them, nothing else running.
5. **naive**: on the first --naive-studies studies, one ``predict`` per slice (the way a
   per-image loop scores), against the batched model time on the same slices: the ratio is
   the gain of batching. For an exported engine the same slices also go through the Keras
   models one ``predict`` per slice (``naive_keras``: the per-image loop the project started
   from), and end to end is compared with that rate in the same run.

It prints JSON; the CPU time other processes took during each phase shows whether the machine
was quiet (busy time from /proc/stat minus this process and the S3 server).
``rss_gb_engine_loaded`` is the benchmark process's memory with the engine loaded and warmed
up; ``peak_rss_gb`` its peak over the whole run (training included when it trained a model).
"""

from __future__ import annotations

import argparse
import logging
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from quality import PROFILES, _server, _settings, emit, machine, peak_rss_gb, start_logging

SPEED_ONLY = {"epochs": 1, "seg_epochs": 1, "warmup_epochs": 0, "max_train_slices": 384,
              "early_stopping_patience": 1}
#: matmul shapes (m x k x n) the limit is measured on: square ones and convolution-like ones
#: (many output pixels x kernel-size * input channels x output channels)
MATMUL_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048), (4096, 1024, 256), (4096, 576, 64),
                 (16384, 1152, 128))


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (user+nice+system+irq+softirq+steal)."""
    fields = open("/proc/stat").readline().split()[1:]
    ticks = [int(v) for v in fields]
    return (sum(ticks[:3]) + sum(ticks[5:8])) / os.sysconf("SC_CLK_TCK")


def own_seconds(pid: int | None = None) -> float:
    """CPU seconds of one process (this one by default), children excluded."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    parts = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


class Phase:
    """Times a phase: wall seconds and the CPU seconds of other processes meanwhile."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def __enter__(self) -> Phase:
        self.start = (time.perf_counter(), busy_seconds(), own_seconds(), self._server())
        return self

    def _server(self) -> float:
        try:
            return own_seconds(self.server_pid) if self.server_pid else 0.0
        except OSError:
            return 0.0

    def __exit__(self, *exc: object) -> None:
        wall, busy, mine, server = self.start
        self.wall_s = time.perf_counter() - wall
        self.other_cpu_s = max(0.0, (busy_seconds() - busy) - (own_seconds() - mine)
                               - (self._server() - server))


def _unpack(data: Path, workdir: Path) -> Path:
    """The kaggle_3m folder: data itself, or the archive unpacked into workdir."""
    if data.is_dir():
        return data
    with tarfile.open(data) as tf:
        tf.extractall(workdir, filter="data")
    return next(p for p in workdir.rglob("kaggle_3m") if p.is_dir())


def _model(settings, store, data: Path, model_version: str | None, phase: Phase) -> str:
    """An existing model version, or a speed-only one trained now."""
    from brain_tumor import steps
    from brain_tumor.ingest.exports import list_exports, split_archive_name, upload_export
    from brain_tumor.store.modelstore import ModelStore

    if model_version and ModelStore(store, settings).exists(model_version):
        return model_version
    if model_version:
        logging.warning("model version %s is not in this server; training a speed-only model",
                        model_version)
    parsed = split_archive_name(data.name)
    export_id = parsed[0] if parsed else data.name
    with phase:
        if export_id not in list_exports(store, settings):
            upload_export(store, settings, data, export_id)
        version = steps.ingest(settings, [export_id])["dataset_version"]
        steps.split(settings, version)
        record = steps.train(settings.model_copy(update=SPEED_ONLY), version, verbose=2)
    logging.info("speed-only model %s trained in %.0f s", record["model_version"], phase.wall_s)
    return record["model_version"]


def rss_gb() -> float:
    """Resident memory of this process now, GiB (VmRSS)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _study_images(store, settings, study_id: str) -> tuple[list, float]:
    """The decoded slices of one study read one after the other, and the seconds it took."""
    from brain_tumor.ingest.imaging import decode_image
    from brain_tumor.scoring.readers import TiffFolderReader
    from brain_tumor.store.incoming import IncomingStore

    keys = [k for _, k in TiffFolderReader(IncomingStore(store, settings)).slice_keys(study_id)]
    start = time.perf_counter()
    images = [decode_image(store.get(k)) for k in keys]
    return images, time.perf_counter() - start


def _naive(engine, images: list) -> float:
    """Model seconds for slices predicted the naive way: one ``predict`` call per slice."""
    start = time.perf_counter()
    for img in images:
        engine.predict([img])
    return time.perf_counter() - start


def _packed_model_time(engine, studies: list, pack_slices: int) -> float:
    """Model seconds for every study's slices, nothing else running: studies grouped as the
    pipeline groups them (until a group holds ``pack_slices`` slices), one engine call each."""
    many = getattr(engine, "predict_studies", None)
    seconds, group = 0.0, []
    for images in studies:
        group.append(images)
        if sum(len(g) for g in group) >= max(pack_slices, 1) or many is None:
            seconds += _timed(lambda g=group: many(g) if many else engine.predict(g[0]))
            group = []
    if group:
        seconds += _timed(lambda g=group: many(g) if many else engine.predict(g[0]))
    return seconds


def _keras_naive(store, settings, version: str, studies: list) -> float:
    """Model seconds of the same slices through the Keras models, one ``predict`` per slice:
    the per-image loop the project started from (measured in the same run)."""
    from brain_tumor.ml.predict import load_model_version
    from brain_tumor.scoring.engines import KerasEngine

    engine = KerasEngine(load_model_version(store, settings, version), settings.batch_size)
    engine.predict([studies[0][0]])  # warm-up
    return sum(_naive(engine, images) for images in studies)


def _batched_model_time(engine, images: list) -> float:
    """Model seconds for one study's slices predicted in batches, as the pipeline does."""
    start = time.perf_counter()
    engine.predict(images)
    return time.perf_counter() - start


def _best_rate(run_once, flops: float, repeats: int) -> float:
    """The best GFLOP/s of ``repeats`` timed calls (after one warm-up call)."""
    run_once()
    best = min(_timed(run_once) for _ in range(repeats))
    return flops / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _limit(how: str, threads: int | str, rates: dict) -> dict:
    """The figures of a matmul limit: the best rate and the rate of each shape (m x k x n)."""
    return {"how": how, "threads": threads,
            "gflops_by_shape": {"x".join(map(str, shape)): round(v, 1)
                                for shape, v in rates.items()},
            "gflops": round(max(rates.values()), 1)}


def matmul_limit_onnx(threads: int, runtime: str = "onnxruntime", repeats: int = 10,
                      precision: str = "f32") -> dict:
    """Best MatMul GFLOP/s of an ONNX runtime at ``precision`` on ``threads`` (0: its default).

    A MatMul-only ONNX graph run as the engine runs the models (``engines.compile_graph``); its
    right-hand matrix is a graph constant, as a model's weights are (packed once), and the
    shapes span those of the models' convolutions.
    """
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return {**matmul_limit_numpy(repeats), "note": "onnx package missing: numpy matmul"}

    from brain_tumor.scoring.engines import compile_graph

    rng = np.random.default_rng(0)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m, k, n in MATMUL_SHAPES:
            graph = helper.make_graph(
                [helper.make_node("MatMul", ["image", "b"], ["y"])], "matmul",
                [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["m", k])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
                initializer=[numpy_helper.from_array(
                    rng.standard_normal((k, n), dtype=np.float32), "b")])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            model.ir_version = 8
            path = Path(tmp) / f"matmul-{m}-{k}-{n}.onnx"
            path.write_bytes(model.SerializeToString())
            run = compile_graph(path, runtime, threads, precision)
            a = rng.standard_normal((m, k), dtype=np.float32)
            rates[(m, k, n)] = _best_rate(lambda run=run, a=a: run({"image": a}),
                                          2.0 * m * k * n, repeats)
    return {**_limit(f"{runtime} MatMul, constant right-hand side", threads or "default",
                     rates), "precision": precision}


def onnx_limit(threads: int, precision: str = "f32") -> dict:
    """The better MatMul rate of OpenVINO and ONNX Runtime at ``precision`` (each runtime that
    computes it is measured; one CPU limit): f32 both, bf16 OpenVINO only."""
    from brain_tumor.scoring.engines import RUNTIMES, openvino_available

    runtimes = [r for r in RUNTIMES if (r != "openvino" or openvino_available())
                and (precision == "f32" or r == "openvino")]
    each = {runtime: matmul_limit_onnx(threads, runtime, precision=precision)
            for runtime in runtimes}
    best = max(each.values(), key=lambda limit: limit["gflops"])
    return {**best, "by_runtime": each}


def matmul_limit_keras(repeats: int = 10) -> dict:
    """Best float32 matmul GFLOP/s of TensorFlow (the Keras backend) on its default threads."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    rates = {}
    for m, k, n in MATMUL_SHAPES:
        a = tf.constant(rng.standard_normal((m, k), dtype=np.float32))
        b = tf.constant(rng.standard_normal((k, n), dtype=np.float32))
        matmul = tf.function(lambda a=a, b=b: tf.linalg.matmul(a, b))
        rates[(m, k, n)] = _best_rate(lambda f=matmul: f().numpy(), 2.0 * m * k * n, repeats)
    return _limit("tensorflow matmul", "default", rates)


def matmul_limit_numpy(repeats: int = 10) -> dict:
    """Best float32 matmul GFLOP/s of numpy (its BLAS, its threads)."""
    rng = np.random.default_rng(0)
    rates = {}
    for m, k, n in MATMUL_SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        rates[(m, k, n)] = _best_rate(lambda a=a, b=b: a @ b, 2.0 * m * k * n, repeats)
    return _limit("numpy matmul", "default", rates)


def flops_per_slice(store, settings, version: str) -> dict:
    """FLOPs of one slice through the classifier and the segmenter (``brain_tumor.ml.flops``)."""
    from brain_tumor.ml.flops import model_flops
    from brain_tumor.ml.models import load_model
    from brain_tumor.store.modelstore import ModelStore

    folder = ModelStore(store, settings).fetch(version)
    counts = {name: model_flops(load_model(folder / f"{name}.keras", compile=False))
              for name in ("classifier", "segmenter")}
    return {**counts, "total": sum(counts.values())}


def _rate(slices: int, seconds: float, flops: float, limit_gflops: float) -> dict:
    """Slices/s and the share of the matmul limit those slices' FLOPs are."""
    per_s = slices / seconds
    return {"slices_per_s": round(per_s, 2),
            "share_of_limit": round(per_s * flops / (limit_gflops * 1e9), 4)}


def _synthetic(workdir: Path, patients: int) -> Path:
    """A small generated kaggle_3m-style folder (smoke runs)."""
    from brain_tumor.devtools.synth import SynthSpec, make_export

    return make_export(workdir / "synthetic-e1", SynthSpec(patients=patients, slices=8, size=64,
                                                           seed=1)).root


def run(args: argparse.Namespace) -> dict:
    """The benchmark (see the module docstring)."""
    from brain_tumor import steps
    from brain_tumor.ml.export import ensure_exported
    from brain_tumor.scoring.engines import load_engine
    from brain_tumor.scoring.readers import upload_study
    from brain_tumor.scoring.study import build_pipeline
    from brain_tumor.store.incoming import IncomingStore

    home = Path(args.home).resolve()
    server = _server(home)
    server.start()
    pid = server.pid()
    settings = _settings(server, home, dict(PROFILES["cpu"])).model_copy(update={
        "incoming_prefix": "bench-in/", "scores_prefix": "bench-out/", "engine": args.engine,
        "engine_threads": args.threads, "engine_precision": args.precision,
        "engine_batch_size": args.batch_size, "engine_pack_slices": args.pack_slices})
    store = steps.open_store(settings)
    phases: dict[str, Phase] = {name: Phase(pid) for name in
                                ("train", "upload", "load", "batched", "naive")}
    try:
        with tempfile.TemporaryDirectory(dir=home) as tmp:
            data = (_synthetic(Path(tmp), max(6, args.studies)) if args.data == "synthetic"
                    else Path(args.data))
            version = _model(settings, store, data, args.model_version, phases["train"])
            if args.engine != "keras":
                ensure_exported(store, settings, version)
            root = _unpack(data, Path(tmp))
            folders = sorted(p for p in root.iterdir() if p.is_dir())[: args.studies or None]
            present = set(IncomingStore(store, settings).study_ids())
            with phases["upload"]:
                for folder in folders:
                    if folder.name not in present:
                        upload_study(IncomingStore(store, settings), folder)
        # a fresh output prefix per run, so every study is really scored
        settings = settings.model_copy(update={"scores_prefix": f"bench-out/{int(time.time())}/"})
        with phases["load"]:
            engine = load_engine(store, settings, version)
            size = int(engine.record["image_size"])
            engine.predict([np.zeros((size, size, 3), np.uint8)])  # warm-up
        rss_loaded = rss_gb()
        limit = (matmul_limit_keras() if engine.name == "keras"
                 else onnx_limit(args.threads, args.precision))
        pipeline = build_pipeline(store, settings, engine)
        results = []
        with phases["batched"]:
            for _, outcome in pipeline.score_many([folder.name for folder in folders]):
                if isinstance(outcome, Exception):
                    raise outcome
                results.append(outcome)
        slices = sum(r["slices"] for r in results)
        split = {k: round(sum(r["timings"][k] for r in results), 2)
                 for k in ("read_s", "model_s", "write_s")}
        naive_ids = [f.name for f in folders[: args.naive_studies]]
        naive = {"slices": 0, "read_s": 0.0, "model_s": 0.0, "batched_model_s": 0.0}
        naive_images = []
        with phases["naive"]:
            for sid in naive_ids:
                images, read_s = _study_images(store, settings, sid)
                naive_images.append(images)
                naive["slices"] += len(images)
                naive["read_s"] += read_s
                naive["model_s"] += _naive(engine, images)
                naive["batched_model_s"] += _batched_model_time(engine, images)
        every = [_study_images(store, settings, f.name)[0] for f in folders]
        models_alone_s = _packed_model_time(engine, every, settings.engine_pack_slices)
        keras_naive_s = (_keras_naive(store, settings, version, naive_images)
                         if engine.name != "keras" and naive_images else None)
        flops = flops_per_slice(store, settings, version)
    finally:
        server.stop()
    batched = phases["batched"]
    gflops = limit["gflops"]
    return {
        "machine": machine(), "model_version": version, "image_size": settings.image_size,
        "engine": engine.name, "engine_threads": args.threads or "default",
        "precision": args.precision, "batch_size": getattr(engine, "batch_size", None),
        "pack_slices": settings.engine_pack_slices, "write_behind": pipeline.write_behind,
        "io_workers": settings.io_workers,
        "studies": len(results), "slices": slices,
        "tumor_studies": sum(bool(r["tumor_present"]) for r in results),
        "limit": limit, "flops_per_slice": flops,
        "slices_per_s_at_limit": round(gflops * 1e9 / flops["total"], 2),
        "batched": {"wall_s": round(batched.wall_s, 1),
                    "end_to_end": _rate(slices, batched.wall_s, flops["total"], gflops),
                    "model_only_beside_writes": _rate(slices, split["model_s"], flops["total"],
                                                      gflops),
                    "model_only": _rate(slices, models_alone_s, flops["total"], gflops),
                    "split_s": split,
                    "split_share": {k: round(v / sum(split.values()), 3)
                                    for k, v in split.items()},
                    "other_cpu_s": round(batched.other_cpu_s, 1)},
        "naive": {"studies": len(naive_ids), "slices": naive["slices"],
                  "model_s": round(naive["model_s"], 2),
                  "model_only": _rate(naive["slices"], naive["model_s"], flops["total"], gflops),
                  "batched_model_s_same_slices": round(naive["batched_model_s"], 2),
                  "batched_model_only": _rate(naive["slices"], naive["batched_model_s"],
                                              flops["total"], gflops),
                  "speedup_model": round(naive["model_s"] / naive["batched_model_s"], 2),
                  "end_to_end_vs_naive": round((slices / batched.wall_s)
                                               / (naive["slices"] / naive["model_s"]), 2),
                  "sequential_read_s": round(naive["read_s"], 2),
                  "other_cpu_s": round(phases["naive"].other_cpu_s, 1)},
        "naive_keras": None if keras_naive_s is None else {
            "model_s": round(keras_naive_s, 2),
            "slices_per_s": round(naive["slices"] / keras_naive_s, 2),
            "end_to_end_vs_naive_keras": round((slices / batched.wall_s)
                                               / (naive["slices"] / keras_naive_s), 2)},
        "model_load_s": round(phases["load"].wall_s, 2),
        "upload_s": round(phases["upload"].wall_s, 1),
        "train_s": round(getattr(phases["train"], "wall_s", 0.0), 1),
        "rss_gb_engine_loaded": round(rss_loaded, 2),
        "peak_rss_gb": round(peak_rss_gb(), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="the LGG archive, an unpacked kaggle_3m folder, or "
                                     "'synthetic' (a smoke run on a few generated patients)")
    parser.add_argument("--engine", choices=("openvino", "onnx", "keras"), default="openvino",
                        help="the inference engine scored with (openvino and onnx run the "
                             "version's ONNX export on OpenVINO or ONNX Runtime)")
    parser.add_argument("--precision", choices=("f32", "bf16"), default="f32",
                        help="the engine's arithmetic (bf16: OpenVINO only); the limit is "
                             "measured at the same precision")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="slices per model call (0: the engine_batch_size setting's default)")
    parser.add_argument("--pack-slices", type=int, default=128,
                        help="studies predicted together until they hold this many slices "
                             "(0: one study per model call)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads per model of the ONNX engine (0: the runtime's default)")
    parser.add_argument("--home", default="bench/results/quality-home",
                        help="server data and model cache (shared with bench/quality.py)")
    parser.add_argument("--model-version", help="score with this model version if present")
    parser.add_argument("--studies", type=int, default=0, help="score only the first N (0: all)")
    parser.add_argument("--naive-studies", type=int, default=10,
                        help="studies scored the naive way for the comparison")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    start_logging()
    emit(run(args), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
