"""Scoring benchmark on the real LGG data: every patient scored as an incoming study.

  python bench/scoring.py DATA [--home DIR] [--model-version M] [--naive-studies 10] [--json OUT]

DATA is the LGG archive (lgg-kaggle_3m-dev81.tar.xz) or an unpacked kaggle_3m folder. The
benchmark starts its own SeaweedFS server under --home (the quality benchmark's port settings:
BENCH_S3_PORT, BENCH_S3_PORT_BASE), then:

1. **model**: --model-version if it is in that server (e.g. the one `bench/quality.py run
   --profile cpu --home H` left), else a *speed-only* model of the same architecture (ResNet50 +
   U-Net at 128x128, the CPU profile) trained for one short epoch on the real data. Its quality
   is not meaningful; its speed is the CPU profile's.
2. **studies**: each patient folder is uploaded (slices only) to ``incoming/<patient>/``.
3. **batched**: ``score.score_study`` on every study with the model loaded once — what a scoring
   task does: each slice read once (parallel GETs), the study predicted in batches, outputs
   written. Slices/s end to end and the time split between reading, model and writing.
4. **naive**: on the first --naive-studies studies, the same reading but one ``predict`` call per
   slice and model (the way a per-image loop scores), against the batched model time on the same
   slices: the ratio is the gain of batching.

It prints JSON; the CPU time other processes took during each phase shows whether the machine
was quiet (busy time from /proc/stat minus this process and the S3 server).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from quality import _server, _settings, machine, peak_rss_gb

SPEED_ONLY = {"epochs": 1, "seg_epochs": 1, "warmup_epochs": 0, "max_train_slices": 384,
              "early_stopping_patience": 1}


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


def _naive(store, settings, model, study_id: str) -> tuple[int, float, float]:
    """One study the naive way: (slices, read seconds, model seconds, one predict per slice)."""
    from brain_tumor.ingest.imaging import decode_image
    from brain_tumor.ml.predict import to_model_input
    from brain_tumor.scoring.readers import TiffFolderReader
    from brain_tumor.store.incoming import IncomingStore

    keys = [k for _, k in TiffFolderReader(IncomingStore(store, settings)).slice_keys(study_id)]
    start = time.perf_counter()
    images = [decode_image(store.get(k)) for k in keys]
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    for img in images:
        x = to_model_input([img], model.image_size)
        model.classifier.predict(x, verbose=0)
        model.segmenter.predict(x, verbose=0)
    return len(images), read_s, time.perf_counter() - start


def _batched_model_time(model, store, settings, study_id: str) -> float:
    """Model seconds for one study, batched as score_study does (images already decoded)."""
    from brain_tumor.ingest.imaging import decode_image
    from brain_tumor.ml.predict import predict_batch, to_model_input
    from brain_tumor.scoring.readers import TiffFolderReader
    from brain_tumor.store.incoming import IncomingStore

    reader = TiffFolderReader(IncomingStore(store, settings))
    images = [decode_image(store.get(k)) for _, k in reader.slice_keys(study_id)]
    start = time.perf_counter()
    predict_batch(model, to_model_input(images, model.image_size), settings.batch_size)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    """The benchmark (see the module docstring)."""
    from brain_tumor import steps
    from brain_tumor.ml.predict import load_model_version
    from brain_tumor.scoring.readers import upload_study
    from brain_tumor.scoring.study import score_study
    from brain_tumor.store.incoming import IncomingStore

    home = Path(args.home).resolve()
    server = _server(home)
    server.start()
    pid = server.pid()
    settings = _settings(server, home, "cpu").model_copy(update={"incoming_prefix": "bench-in/",
                                                                 "scores_prefix": "bench-out/"})
    store = steps.open_store(settings)
    data = Path(args.data)
    phases: dict[str, Phase] = {name: Phase(pid) for name in
                                ("train", "upload", "load", "batched", "naive")}
    try:
        version = _model(settings, store, data, args.model_version, phases["train"])
        with tempfile.TemporaryDirectory(dir=home) as tmp:
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
            model = load_model_version(store, settings, version)
            model.classifier.predict(np.zeros((1, model.image_size, model.image_size, 3),
                                              np.float32), verbose=0)  # warm-up
            model.segmenter.predict(np.zeros((1, model.image_size, model.image_size, 3),
                                             np.float32), verbose=0)
        results = []
        with phases["batched"]:
            for folder in folders:
                results.append(score_study(store, settings, model, folder.name))
        slices = sum(r["slices"] for r in results)
        split = {k: round(sum(r["timings"][k] for r in results), 2)
                 for k in ("read_s", "model_s", "write_s")}
        naive_ids = [f.name for f in folders[: args.naive_studies]]
        naive = {"slices": 0, "read_s": 0.0, "model_s": 0.0}
        with phases["naive"]:
            for sid in naive_ids:
                n, read_s, model_s = _naive(store, settings, model, sid)
                naive["slices"] += n
                naive["read_s"] += read_s
                naive["model_s"] += model_s
        batched_model_same = sum(_batched_model_time(model, store, settings, sid)
                                 for sid in naive_ids)
    finally:
        server.stop()
    batched = phases["batched"]
    return {
        "machine": machine(), "model_version": version, "image_size": settings.image_size,
        "batch_size": settings.batch_size, "io_workers": settings.io_workers,
        "studies": len(results), "slices": slices,
        "tumor_studies": sum(bool(r["tumor_present"]) for r in results),
        "batched": {"wall_s": round(batched.wall_s, 1),
                    "slices_per_s": round(slices / batched.wall_s, 2),
                    "split_s": split,
                    "split_share": {k: round(v / sum(split.values()), 3)
                                    for k, v in split.items()},
                    "other_cpu_s": round(batched.other_cpu_s, 1)},
        "naive": {"studies": len(naive_ids), "slices": naive["slices"],
                  "model_s": round(naive["model_s"], 2),
                  "model_slices_per_s": round(naive["slices"] / naive["model_s"], 2),
                  "batched_model_s_same_slices": round(batched_model_same, 2),
                  "batched_model_slices_per_s": round(naive["slices"] / batched_model_same, 2),
                  "speedup_model": round(naive["model_s"] / batched_model_same, 2),
                  "sequential_read_s": round(naive["read_s"], 2),
                  "other_cpu_s": round(phases["naive"].other_cpu_s, 1)},
        "model_load_s": round(phases["load"].wall_s, 2),
        "upload_s": round(phases["upload"].wall_s, 1),
        "train_s": round(getattr(phases["train"], "wall_s", 0.0), 1),
        "peak_rss_gb": round(peak_rss_gb(), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="the LGG archive or an unpacked kaggle_3m folder")
    parser.add_argument("--home", default="bench/results/quality-home",
                        help="server data and model cache (shared with bench/quality.py)")
    parser.add_argument("--model-version", help="score with this model version if present")
    parser.add_argument("--studies", type=int, default=0, help="score only the first N (0: all)")
    parser.add_argument("--naive-studies", type=int, default=10,
                        help="studies scored the naive way for the comparison")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    figures = run(args)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
