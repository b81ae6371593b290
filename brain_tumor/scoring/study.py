"""Scoring one study: reader -> engine -> post-processing -> writers, then summary and marker.

A study is all-or-nothing: a reader that rejects it (``StudyRejected``) leaves a quarantine
record at ``scores/<model>/quarantine/<study>.json`` and nothing else. A scored study's outputs
are written first and its done marker last (``brain_tumor.store.scores``), so a study without
the marker has no visible result and re-running it rewrites the same keys.

``ScoringPipeline`` holds one implementation of each seam (``brain_tumor.scoring.contracts``);
build it once per loaded model version and score as many studies with it as there are
(``score_many``: studies read ahead in a background thread, several predicted in one engine
call, ``engine_pack_slices``, and each call's studies written in a background thread while the
next call is in the model).

When the model version has an out-of-distribution reference (``ood.npz``), every study is
checked after the model ran (``ood_check``): summary.json gets ``out_of_distribution``,
``ood_score``, ``ood_slices``, ``ood_reasons``, ``ood_note`` and ``withheld``, slices.parquet
the slices' ``ood_score``. A flagged study is still scored; with ``ood_withhold`` its masks and
overlays are not written. A version without a reference leaves these fields null.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from brain_tumor.ml.ood_reference import load_reference
from brain_tumor.ml.predict import LoadedModel
from brain_tumor.scoring import ood
from brain_tumor.scoring.contracts import (
    InferenceEngine,
    OutputWriter,
    PostProcessor,
    RawPrediction,
    Study,
    StudyPrediction,
    StudyReader,
    StudyRejected,
)
from brain_tumor.scoring.engines import inference_engine, study_input
from brain_tumor.scoring.geometry import study_volume
from brain_tumor.scoring.postprocess import post_processor
from brain_tumor.scoring.readers import study_reader
from brain_tumor.scoring.writers import output_writers
from brain_tumor.settings import Settings
from brain_tumor.store.datasets import utc_now
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

log = logging.getLogger(__name__)

#: summary.json's out-of-distribution fields of a study scored without a reference
UNCHECKED = {"out_of_distribution": None, "ood_score": None, "ood_slices": None,
             "ood_reasons": None, "ood_note": "the model version has no out-of-distribution "
                                              "reference", "withheld": False}
REDUCED_NOTE = ("reduced_sequences: channels were filled from the FLAIR, so the input "
                "statistics are not judged; the features detector alone decides")


def ood_check(reference: ood.Reference | None, study: Study, raw: RawPrediction,
              image_size: int) -> tuple[ood.OodResult | None, dict[str, Any]]:
    """The study's out-of-distribution result and its summary.json fields.

    Input statistics are taken on the model's actual input: the slices resized and mapped with
    the intensity normalization the reference states (the model version's, what it was fitted
    on); features are the engine's. A study with ``reduced_sequences`` is judged by the features
    alone (the training data holds such studies), and so is every study when the reference's
    input statistics are not this code's (a reference to refit).
    """
    if reference is None:
        return None, dict(UNCHECKED)
    values: dict[str, np.ndarray] = {}
    note = None
    if study.summary.get("reduced_sequences"):
        note = REDUCED_NOTE
    elif not reference.judges_inputs():
        note = ("the reference's input statistics are not the ones this scorer computes "
                "(refit the reference); the features detector alone decides")
    else:
        values["input"] = ood.input_statistics(
            study_input(study.images, image_size, str(reference.input_norm)))
    if raw.features is not None and reference.detector("features") is not None:
        values["features"] = raw.features
    if not values:
        return None, {**UNCHECKED, "ood_note": f"{note}; the engine gave no features, so the "
                                               "study was not checked"}
    result = ood.check(reference, values)
    return result, {**result.summary(), "ood_note": note, "withheld": False}


@dataclass
class Scored:
    """A study through the model, post-processing and OOD check, its outputs not yet written."""

    study: Study
    pred: StudyPrediction
    read_s: float  # seconds waited for the study's slices
    model_s: float  # its share of the model call, post-processing and OOD check
    ood_s: float  # of model_s, the out-of-distribution check


@dataclass
class ScoringPipeline:
    """One implementation of each seam, and the store the results go to."""

    reader: StudyReader
    engine: InferenceEngine
    postprocess: PostProcessor
    writers: list[OutputWriter]
    scores: ScoreStore
    reference: ood.Reference | None = None  # the model version's out-of-distribution reference
    withhold: bool = False  # flagged studies: no masks or overlays (``ood_withhold``)
    #: ``score_many``: studies predicted together until they hold this many slices (0: one each)
    pack_slices: int = 0
    #: ``score_many``: write a model call's studies while the next call runs (False: in line)
    write_behind: bool = True

    def _read(self, study_id: str) -> Study | None:
        """The study read and checked, or None if scored already; quarantine a rejected one."""
        mv = self.engine.version
        if self.scores.is_done(mv, study_id):
            return None
        try:
            return self.reader.read(study_id)
        except StudyRejected as exc:
            self.scores.quarantine(mv, study_id, {
                "study_id": study_id, "model_version": mv, "reason": exc.reason,
                "detail": exc.detail, "files": exc.files, "at": utc_now()})
            log.warning("study %s rejected (%s): %s", study_id, exc.reason, exc.detail)
            raise

    def _skipped(self, study_id: str) -> dict[str, Any]:
        """The result of a study the model version has scored already."""
        mv = self.engine.version
        log.info("study %s already scored with %s; skipping", study_id, mv)
        return {"study_id": study_id, "status": "skipped", **self.scores.summary(mv, study_id)}

    def _finish(self, study: Study, raw: RawPrediction, read_s: float,
                model_s: float) -> Scored:
        """Post-processing and the out-of-distribution check of one predicted study."""
        clock = time.perf_counter()
        pred = self.postprocess(raw, study, self.engine.threshold)
        ood_clock = time.perf_counter()
        checked, ood_fields = ood_check(self.reference, study, raw,
                                        int(self.engine.record["image_size"]))
        if checked is not None:
            pred.ood_score = checked.slice_score
            ood_fields["withheld"] = bool(self.withhold and checked.flagged)
        pred.summary.update(ood_fields)
        ood_s = time.perf_counter() - ood_clock
        return Scored(study, pred, read_s, model_s + time.perf_counter() - clock, ood_s)

    def _write(self, scored: Scored) -> dict[str, Any]:
        """Write a study's outputs, then its summary and done marker last; its result."""
        mv, study, pred = self.engine.version, scored.study, scored.pred
        study_id = study.study_id
        clock = time.perf_counter()
        for writer in self.writers:
            writer.write(self.scores, mv, study, pred)
        tumor_slices = int(np.sum(pred.label))
        summary = {
            "study_id": study_id, "model_version": mv,
            "dataset_version": str(self.engine.record["dataset_version"]),
            "tumor_present": tumor_slices > 0, "tumor_slices": tumor_slices,
            "slices": len(study.images), "tumor_volume_voxels": study_volume(pred.masks),
            "max_probability": float(np.max(pred.prob)), "scored_at": utc_now(),
            **study.summary, **pred.summary,
        }
        marker = {"study_id": study_id, "model_version": mv, "at": utc_now()}
        if not self.scores.commit(mv, study_id, summary, marker):
            log.info("study %s: done marker already present (scored concurrently)", study_id)
        timings = {"read_s": round(scored.read_s, 4), "model_s": round(scored.model_s, 4),
                   "write_s": round(time.perf_counter() - clock, 4)}
        log.info("scored study %s with %s: %d slices, %d with tumor (read %.2fs, model %.2fs "
                 "of which out-of-distribution check %.3fs, write %.2fs)", study_id, mv,
                 len(study.images), tumor_slices, scored.read_s, scored.model_s, scored.ood_s,
                 timings["write_s"])
        if summary.get("out_of_distribution"):
            log.warning("study %s is out of distribution for %s%s: %s", study_id, mv,
                        " (results withheld)" if summary.get("withheld") else "",
                        summary.get("ood_reasons"))
        return {"study_id": study_id, "status": "scored", **summary, "timings": timings}

    def score(self, study_id: str) -> dict[str, Any]:
        """Score one study (or skip it if done); raise StudyRejected after quarantining it."""
        clock = time.perf_counter()
        study = self._read(study_id)
        if study is None:
            return self._skipped(study_id)
        read_s, clock = time.perf_counter() - clock, time.perf_counter()
        raw = self.engine.predict(study.images)
        return self._write(self._finish(study, raw, read_s, time.perf_counter() - clock))

    def _predict_together(self, studies: list[Study]) -> list[RawPrediction | Exception]:
        """Each study's prediction from one engine call (``predict_studies``) where the engine
        has it; study by study when not, or when that call fails (so a failure is the study's)."""
        many = getattr(self.engine, "predict_studies", None)
        if len(studies) > 1 and many is not None:
            try:
                return list(many([s.images for s in studies]))
            except Exception:
                log.warning("predicting %d studies together failed; predicting each alone",
                            len(studies), exc_info=True)
        outcomes: list[RawPrediction | Exception] = []
        for study in studies:
            try:
                outcomes.append(self.engine.predict(study.images))
            except Exception as exc:  # the study's failure, the others go on
                outcomes.append(exc)
        return outcomes

    def _scored_group(self, group: list[tuple[Study, float]]) -> list[Scored | Exception]:
        """A group of read studies through one model call, post-processing and OOD check; each
        study's model time is its share of the call (by slices) plus its own post-processing."""
        clock = time.perf_counter()
        raws = self._predict_together([study for study, _ in group])
        call_s = time.perf_counter() - clock
        total = sum(len(study.images) for study, _ in group)
        out: list[Scored | Exception] = []
        for (study, read_s), raw in zip(group, raws, strict=True):
            if isinstance(raw, Exception):
                out.append(raw)
                continue
            try:
                out.append(self._finish(study, raw, read_s,
                                        call_s * len(study.images) / total))
            except Exception as exc:  # the study's failure, the others go on
                out.append(exc)
        return out

    def score_many(self, study_ids: list[str]) -> Iterator[tuple[str, dict[str, Any] | Exception]]:
        """Score studies (each once, in order): read ahead, predicted several at a time, written
        while the next ones are in the model.

        Studies are read in a background thread ahead of the model. Consecutive studies are
        predicted together until they hold ``pack_slices`` slices (the engine's batches span
        study boundaries; results are split back per study). With ``write_behind`` a model
        call's studies are written in a background thread while the next call runs; the writes
        of one call at most are pending, and a study's done marker still comes after its
        outputs. Yields ``(study_id, result)`` in order, or ``(study_id, exception)`` for a
        study that was rejected (``StudyRejected``, quarantined as by ``score``) or failed
        (reading, the model, post-processing or writing): the others go on. Timings:
        ``read_s`` is the time left waiting for the study's read, ``model_s`` its share of the
        model call plus its post-processing, ``write_s`` its writing (overlapping the next
        call's model time when written behind).
        """
        ids = list(dict.fromkeys(study_ids))
        reads: deque[tuple[str, Future]] = deque()
        out: deque[list[Any]] = deque()  # [study_id, outcome | write Future | None (in model)]
        slices_read = [0, 0]  # slices and studies read so far (the read-ahead window)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as reader, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-behind") as writer:

            def top_up(position: int) -> int:
                mean = slices_read[0] / slices_read[1] if slices_read[1] else 0.0
                window = 2 if not mean else 1 + min(READ_AHEAD_MAX,
                                                    math.ceil(max(self.pack_slices, 1) / mean))
                while position < len(ids) and len(reads) < window:
                    reads.append((ids[position], reader.submit(self._read, ids[position])))
                    position += 1
                return position

            def ready() -> Iterator[tuple[str, dict[str, Any] | Exception]]:
                while out and out[0][1] is not None and not (
                        isinstance(out[0][1], Future) and not out[0][1].done()):
                    study_id, item = out.popleft()
                    yield study_id, _outcome(item)

            position = top_up(0)
            writing: list[Future] = []
            try:
                while reads:
                    group: list[tuple[Study, float]] = []
                    slots: list[list[Any]] = []
                    while reads and (not group or sum(len(s.images) for s, _ in group)
                                     < self.pack_slices):
                        study_id, future = reads.popleft()
                        slot: list[Any] = [study_id, None]
                        out.append(slot)
                        clock = time.perf_counter()
                        try:
                            study = future.result()
                        except Exception as exc:  # rejected (quarantined) or unreadable
                            slot[1] = exc
                        else:
                            if study is None:
                                slot[1] = self._skipped(study_id)
                            else:
                                group.append((study, time.perf_counter() - clock))
                                slots.append(slot)
                                slices_read[0] += len(study.images)
                                slices_read[1] += 1
                        position = top_up(position)
                    if group:
                        scored = self._scored_group(group)
                        for pending in writing:  # the previous call's writes are done
                            pending.exception()
                        writing = []
                        for slot, item in zip(slots, scored, strict=True):
                            if isinstance(item, Exception):
                                slot[1] = item
                            elif self.write_behind:
                                slot[1] = writer.submit(self._write, item)
                                writing.append(slot[1])
                            else:
                                slot[1] = _call(self._write, item)
                    yield from ready()
                for pending in writing:
                    pending.exception()
                yield from ready()
            finally:
                for _, future in reads:
                    future.cancel()


#: most studies read ahead of the model beyond those ``pack_slices`` calls for
READ_AHEAD_MAX = 16


def _call(fn: Callable[[Scored], dict[str, Any]], scored: Scored) -> dict[str, Any] | Exception:
    """fn(scored), or the exception it raised."""
    try:
        return fn(scored)
    except Exception as exc:  # handed to the caller, study by study
        return exc


def _outcome(item: Future | dict[str, Any] | Exception) -> dict[str, Any] | Exception:
    """A finished study's result or exception (from its write when written behind)."""
    if isinstance(item, Future):
        return item.exception() or item.result()
    return item


def build_pipeline(store: ObjectStore, settings: Settings,
                   model: LoadedModel | InferenceEngine) -> ScoringPipeline:
    """The pipeline the settings and the model version call for, one implementation a seam.

    ``model`` is a loaded engine (``engines.load_engine``) or a version's Keras models.
    """
    engine = inference_engine(model, settings)
    return ScoringPipeline(
        reader=study_reader(IncomingStore(store, settings), settings),
        engine=engine,
        postprocess=post_processor(engine.record, settings),
        writers=output_writers(settings),
        scores=ScoreStore(store, settings),
        reference=load_reference(store, settings, engine.record),
        withhold=settings.ood_withhold,
        pack_slices=settings.engine_pack_slices,
    )


def score_study(store: ObjectStore, settings: Settings, model: LoadedModel | InferenceEngine,
                study_id: str) -> dict[str, Any]:
    """Score one study with the default pipeline (see ``ScoringPipeline.score``)."""
    return build_pipeline(store, settings, model).score(study_id)
