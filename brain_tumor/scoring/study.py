"""Scoring one study: reader -> engine -> post-processing -> writers, then summary and marker.

A study is all-or-nothing: a reader that rejects it (``StudyRejected``) leaves a quarantine
record at ``scores/<model>/quarantine/<study>.json`` and nothing else. A scored study's outputs
are written first and its done marker last (``brain_tumor.store.scores``), so a study without
the marker has no visible result and re-running it rewrites the same keys.

``ScoringPipeline`` holds one implementation of each seam (``brain_tumor.scoring.contracts``);
build it once per loaded model version and score as many studies with it as there are
(``score_many`` reads the next study while the model runs on one).

When the model version has an out-of-distribution reference (``ood.npz``), every study is
checked after the model ran (``ood_check``): summary.json gets ``out_of_distribution``,
``ood_score``, ``ood_slices``, ``ood_reasons``, ``ood_note`` and ``withheld``, slices.parquet
the slices' ``ood_score``. A flagged study is still scored; with ``ood_withhold`` its masks and
overlays are not written. A version without a reference leaves these fields null.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brain_tumor.ml.ood_reference import load_reference
from brain_tumor.ml.predict import LoadedModel, to_model_input
from brain_tumor.scoring import ood
from brain_tumor.scoring.contracts import (
    InferenceEngine,
    OutputWriter,
    PostProcessor,
    RawPrediction,
    Study,
    StudyReader,
    StudyRejected,
)
from brain_tumor.scoring.engines import inference_engine
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

    Input statistics are taken on the resized model input before normalization (what the
    reference was fitted on); features are the engine's. A study with ``reduced_sequences`` is
    judged by the features alone (the training data holds such studies).
    """
    if reference is None:
        return None, dict(UNCHECKED)
    values: dict[str, np.ndarray] = {}
    note = None
    if study.summary.get("reduced_sequences"):
        note = REDUCED_NOTE
    else:
        values["input"] = ood.input_statistics(to_model_input(study.images, image_size))
    if raw.features is not None and reference.detector("features") is not None:
        values["features"] = raw.features
    if not values:
        return None, {**UNCHECKED, "ood_note": f"{note}; the engine gave no features, so the "
                                               "study was not checked"}
    result = ood.check(reference, values)
    return result, {**result.summary(), "ood_note": note, "withheld": False}


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

    _ahead: dict[str, Future] = field(default_factory=dict, init=False, repr=False)

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

    def score(self, study_id: str) -> dict[str, Any]:
        """Score one study (or skip it if done); raise StudyRejected after quarantining it."""
        mv = self.engine.version
        clock = time.perf_counter()
        ahead = self._ahead.pop(study_id, None)
        study = ahead.result() if ahead is not None else self._read(study_id)
        if study is None:
            log.info("study %s already scored with %s; skipping", study_id, mv)
            return {"study_id": study_id, "status": "skipped", **self.scores.summary(mv, study_id)}
        read_s, clock = time.perf_counter() - clock, time.perf_counter()
        raw = self.engine.predict(study.images)
        pred = self.postprocess(raw, study, self.engine.threshold)
        ood_clock = time.perf_counter()
        checked, ood_fields = ood_check(self.reference, study, raw,
                                        int(self.engine.record["image_size"]))
        if checked is not None:
            pred.ood_score = checked.slice_score
            ood_fields["withheld"] = bool(self.withhold and checked.flagged)
        pred.summary.update(ood_fields)
        ood_s = time.perf_counter() - ood_clock
        model_s, clock = time.perf_counter() - clock, time.perf_counter()
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
        timings = {"read_s": round(read_s, 4), "model_s": round(model_s, 4),
                   "write_s": round(time.perf_counter() - clock, 4)}
        log.info("scored study %s with %s: %d slices, %d with tumor (read %.2fs, model %.2fs "
                 "of which out-of-distribution check %.3fs, write %.2fs)", study_id, mv,
                 len(study.images), tumor_slices, read_s, model_s, ood_s, timings["write_s"])
        if summary.get("out_of_distribution"):
            log.warning("study %s is out of distribution for %s%s: %s", study_id, mv,
                        " (results withheld)" if summary.get("withheld") else "",
                        summary.get("ood_reasons"))
        return {"study_id": study_id, "status": "scored", **summary, "timings": timings}

    def score_many(self, study_ids: list[str]) -> Iterator[tuple[str, dict[str, Any] | Exception]]:
        """Score studies in order, reading the next while one is in the model.

        Yields ``(study_id, result)``, or ``(study_id, exception)`` for a study that was
        rejected (``StudyRejected``, quarantined as by ``score``) or failed; the others go on.
        ``read_s`` of a study read ahead is the time left waiting for it.
        """
        ids = list(study_ids)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
            try:
                for i, study_id in enumerate(ids):
                    following = ids[i + 1] if i + 1 < len(ids) else None
                    if following is not None and following not in self._ahead:
                        self._ahead[following] = pool.submit(self._read, following)
                    try:
                        outcome: dict[str, Any] | Exception = self.score(study_id)
                    except Exception as exc:  # handed to the caller, study by study
                        outcome = exc
                    yield study_id, outcome
            finally:
                for future in self._ahead.values():
                    future.cancel()
                self._ahead.clear()


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
    )


def score_study(store: ObjectStore, settings: Settings, model: LoadedModel | InferenceEngine,
                study_id: str) -> dict[str, Any]:
    """Score one study with the default pipeline (see ``ScoringPipeline.score``)."""
    return build_pipeline(store, settings, model).score(study_id)
