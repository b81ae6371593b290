"""Sending results back to the PACS: a scored study's DICOM SEG stored next to the study.

``PacsSegSender`` is the last output writer when ``scoring_source`` is ``dicomweb``: once the
SEG writer has written ``seg.dcm`` under ``scores/<model>/<study>/`` (and named it in
``pred.summary["dicom_seg"]``), it reads it back and stores it in the PACS over STOW-RS. The
SEG carries the study's Study Instance UID, so the PACS files it with the study it was fetched
from. ``summary.json`` then says when (``pacs_sent``). A study without a SEG (a TIFF study,
results withheld) sends nothing; a refused or failed send fails the study, which the next run
scores and sends again (the PACS keeps one object per SOP Instance UID).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from brain_tumor.scoring.contracts import Study, StudyPrediction
from brain_tumor.scoring.writers import DICOM_SEG
from brain_tumor.settings import Settings
from brain_tumor.store.pacs import Pacs
from brain_tumor.store.scores import ScoreStore

log = logging.getLogger(__name__)


class PacsSegSender:
    """Stores the study's DICOM SEG in the PACS (STOW-RS); ``pacs_sent`` into the summary."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pacs: Pacs | None = None

    def _client(self) -> Pacs:
        """The PACS, connected on the first send."""
        if self._pacs is None:
            self._pacs = Pacs.from_settings(self.settings)
        return self._pacs

    def write(self, scores: ScoreStore, model_version: str, study: Study,
              pred: StudyPrediction) -> list[str]:
        """Send the study's SEG when the SEG writer wrote one; writes nothing in the store."""
        if pred.summary.get("dicom_seg") != DICOM_SEG:
            return []
        data = scores.store.get(scores.output_key(model_version, study.study_id, DICOM_SEG))
        self._client().send(data)
        pred.summary["pacs_sent"] = datetime.now(UTC).isoformat(timespec="seconds")
        log.info("study %s: DICOM SEG (%d bytes) stored in the PACS", study.study_id, len(data))
        return []
