"""What writing a scored study's outputs costs, output by output, on the real LGG slices.

  python bench/writes.py DATA [--patients N] [--io-workers W] [--repeats R] [--home DIR]
                              [--json OUT]

DATA is the LGG archive (lgg-kaggle_3m-dev81.tar.xz) or an unpacked kaggle_3m folder. No model
is needed: each patient's slices are scored "perfectly" (the true masks as the predicted masks,
probability 0.9 on tumor slices and 0.1 elsewhere), so every study gets the outputs a scored
study gets (``brain_tumor.scoring.writers.output_writers``: ``slices.parquet``, a mask and an
overlay per tumor slice, ``overview.png``) plus its summary and done marker, written through
the real S3 API to a SeaweedFS server the benchmark starts under --home (ports:
BENCH_S3_PORT, BENCH_S3_PORT_BASE, as for the other benchmarks).

For each writer it prints the CPU seconds of this process (all its threads) and of the S3
server, per study and per tumor slice, the best of --repeats passes; then the same for the
pieces of the picture writer done one by one (overlay drawing, PNG encoding of overlays, masks
and overview, one PUT per object). CPU seconds rather than wall time: on a machine whose cores
the models use, writing costs the models what it costs the cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from quality import _server, _settings, emit, machine, start_logging
from scoring import _unpack, own_seconds


def _studies(root: Path, patients: int) -> list:
    """(Study, StudyPrediction) of the first patients, the true masks as the prediction."""
    import cv2

    from brain_tumor.scoring.contracts import Study, StudyPrediction
    from brain_tumor.scoring.geometry import mask_geometry

    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir())[:patients]:
        files = sorted((f for f in folder.glob("*.tif") if not f.stem.endswith("_mask")),
                       key=lambda f: int(f.stem.rsplit("_", 1)[1]))
        images = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]
        masks = [cv2.imread(str(f.with_name(f"{f.stem}_mask.tif")), 0) > 0 for f in files]
        label = np.asarray([int(m.any()) for m in masks])
        prob = np.where(label, 0.9, 0.1)
        study = Study(folder.name, images, [int(f.stem.rsplit("_", 1)[1]) for f in files],
                      [f.name for f in files], meta={"format": "tiff"})
        out.append((study, StudyPrediction(prob, label, masks, [mask_geometry(m) for m in masks],
                                           {}, ood_score=np.zeros(len(files)), score=prob)))
    return out


class Clock:
    """CPU seconds of this process and of the S3 server between enter and exit."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def _server(self) -> float:
        return own_seconds(self.server_pid) if self.server_pid else 0.0

    def __enter__(self) -> Clock:
        self.start = (time.process_time(), self._server())
        return self

    def __exit__(self, *exc: object) -> None:
        self.client_s = time.process_time() - self.start[0]
        self.server_s = self._server() - self.start[1]


def _per(totals: dict[str, list[float]], studies: int, tumor: int) -> dict:
    """Best pass of each item, per study and per tumor slice, in milliseconds."""
    rows = {}
    for name, (client, server) in totals.items():
        rows[name] = {"client_s": round(client, 3), "server_s": round(server, 3),
                      "ms_per_study": round(1000 * (client + server) / studies, 2),
                      "ms_per_tumor_slice": round(1000 * (client + server) / max(1, tumor), 2)}
    return rows


def _best(passes: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Each item's pass with the least CPU."""
    return {k: min((p[k] for p in passes), key=sum) for k in passes[0]}


def run(args: argparse.Namespace) -> dict:
    from brain_tumor import steps
    from brain_tumor.scoring.overlay import contact_sheet, encode_png, overlay
    from brain_tumor.scoring.writers import MAX_OVERVIEW_TILES, output_writers, spread
    from brain_tumor.store.scores import ScoreStore

    home = Path(args.home).resolve()
    server = _server(home)
    server.start()
    settings = _settings(server, home, {"io_workers": args.io_workers})
    store = steps.open_store(settings)
    scores = ScoreStore(store, settings)
    with tempfile.TemporaryDirectory() as tmp:
        studies = _studies(_unpack(Path(args.data), Path(tmp)), args.patients)
    tumor = sum(int(p.label.sum()) for _, p in studies)
    slices = sum(len(s.images) for s, _ in studies)
    writers = output_writers(settings)
    pid = server.pid()
    try:
        writer_passes, piece_passes = [], []
        for rep in range(args.repeats):
            totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
            version = f"m-writes-{rep}"
            for study, pred in studies:
                for writer in writers:
                    with Clock(pid) as c:
                        writer.write(scores, version, study, pred)
                    totals[type(writer).__name__][0] += c.client_s
                    totals[type(writer).__name__][1] += c.server_s
                with Clock(pid) as c:
                    store.put_json(scores.output_key(version, study.study_id, "summary.json"),
                                   {"study_id": study.study_id})
                    store.put_json(scores.output_key(version, study.study_id, "done.json"),
                                   {"study_id": study.study_id})
                totals["summary and done marker"][0] += c.client_s
                totals["summary and done marker"][1] += c.server_s
            writer_passes.append(dict(totals))
            pieces: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
            for study, pred in studies:
                rows = [i for i in range(len(study.images)) if pred.label[i]]
                with Clock(pid) as c:
                    pics = [overlay(study.images[i], pred.masks[i], pred.geometry[i]["bbox"],
                                    float(pred.prob[i]), 1) for i in rows]
                pieces["overlay drawing"][0] += c.client_s
                with Clock(pid) as c:
                    encoded = [encode_png(p) for p in pics]
                pieces["overlay PNG encoding"][0] += c.client_s
                with Clock(pid) as c:
                    [encode_png(np.where(pred.masks[i], 255, 0).astype(np.uint8)) for i in rows]
                pieces["mask PNG encoding"][0] += c.client_s
                tiles = [pics[rows.index(i)] for i in spread(rows, MAX_OVERVIEW_TILES)] or [
                    overlay(study.images[0], None, None, 0.1, 0)]
                with Clock(pid) as c:
                    encode_png(contact_sheet(tiles))
                pieces["overview drawing and encoding"][0] += c.client_s
                with Clock(pid) as c:
                    for n, data in enumerate(encoded):
                        store.put(scores.output_key(version, study.study_id, f"put/{n}.png"),
                                  data, content_type="image/png")
                pieces["one PUT per overlay"][0] += c.client_s
                pieces["one PUT per overlay"][1] += c.server_s
            piece_passes.append(dict(pieces))
    finally:
        server.stop()
    writers_best, pieces_best = _best(writer_passes), _best(piece_passes)
    total = sum(sum(v) for v in writers_best.values())
    return {
        "machine": machine(), "patients": len(studies), "slices": slices, "tumor_slices": tumor,
        "io_workers": args.io_workers, "repeats": args.repeats,
        "writers": _per(writers_best, len(studies), tumor),
        "picture_writer_pieces": _per(pieces_best, len(studies), tumor),
        "total_cpu_s": round(total, 3),
        "total_ms_per_slice": round(1000 * total / slices, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("data", help="LGG archive or unpacked kaggle_3m folder")
    p.add_argument("--patients", type=int, default=81, help="first N patients (default all)")
    p.add_argument("--io-workers", type=int, default=8,
                   help="threads the picture writer uses per study (BRAIN_TUMOR_IO_WORKERS)")
    p.add_argument("--repeats", type=int, default=2, help="passes; the cheapest is kept")
    p.add_argument("--home", default="bench/results/writes-home", help="S3 server data")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    start_logging()
    emit(run(args), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
