"""The PACS edge: studies found (QIDO-RS), fetched (WADO-RS) and answered (STOW-RS) over
DICOMweb, when ``scoring_source`` is ``dicomweb``.

Each scoring run first asks the PACS for the studies whose StudyDate lies in the last
``dicomweb_window_days`` (``Pacs.candidates``: Study Instance UID and instance count). A study
arrives instance by instance, so it is due only once its count has not changed for
``dicomweb_stable_minutes`` (``due_studies``, pure). What was seen (study id -> instance count
and since when) is kept in one small record, ``incoming/_pacs_seen.json`` (``SEEN_NAME``; an
object at the root of ``incoming/`` is no study folder), keyed by study id, so no UID is
stored there.

A due study is fetched (``pull``) unless the model version has scored it already, or
``incoming/<study_id>/`` holds it sealed with the same instance count (a re-run, or a study the
model version quarantined that has not changed since). Its instances are retrieved into a temp
folder and submitted like a local DICOM study (``upload_dicom_study``): one
``<SOP Instance UID>.dcm`` object each, the manifest last, the study id derived from the Study
Instance UID (``study_id_from_uid``). At most ``scoring_max_studies_per_run`` studies are fetched
per run; the others wait for the next.

The client (``Pacs.from_settings``) is a ``dicomweb_client.DICOMwebClient`` on a requests
session with HTTP basic authentication (``dicomweb_username``/``dicomweb_password``) and the
``dicomweb_timeout_s`` timeout on each request.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brain_tumor.settings import Settings
from brain_tumor.store.ids import InvalidId, study_id_from_uid
from brain_tumor.store.storage import KeyNotFound, ObjectStore, StorageError

if TYPE_CHECKING:
    from dicomweb_client import DICOMwebClient

    from brain_tumor.store.incoming import IncomingStore

log = logging.getLogger(__name__)

#: the record of what the PACS listed, at the root of ``incoming/``
SEEN_NAME = "_pacs_seen.json"
_STUDY_UID = "0020000D"
_INSTANCES = "00201208"  # NumberOfStudyRelatedInstances
_SOP_UID = "00080018"


class PacsError(RuntimeError):
    """The PACS is not configured, or answered something unusable."""


@dataclass(frozen=True)
class Listed:
    """A study the PACS lists: its UID, the study id derived from it, its instance count."""

    study_uid: str
    study_id: str
    instances: int


@dataclass(frozen=True)
class PullReport:
    """What one pull from the PACS found and did (counts go into the scoring plan)."""

    listed: int = 0  # studies in the StudyDate window
    due: int = 0  # stable: instance count unchanged for dicomweb_stable_minutes
    arriving: int = 0  # still changing (or seen for the first time)
    done: int = 0  # due, scored by the model version already
    present: int = 0  # due, in incoming/ already with the same instance count
    fetched: int = 0
    deferred: int = 0  # due, left for the next run (per-run cap)
    failed: int = 0  # due, could not be fetched (logged; tried again next run)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# --- pure ---
def date_range(window_days: float, now: datetime) -> str:
    """The QIDO-RS StudyDate range ``YYYYMMDD-YYYYMMDD`` from window_days before now to now."""
    if window_days <= 0:
        raise ValueError(f"the StudyDate window must be positive, received {window_days!r} days")
    start = now - timedelta(days=window_days)
    return f"{start:%Y%m%d}-{now:%Y%m%d}"


def _value(record: Mapping[str, Any], tag: str) -> Any:
    """The first value of a tag in a DICOM JSON record, None when absent or empty."""
    values = (record.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def parse_studies(records: Iterable[Mapping[str, Any]]) -> list[Listed]:
    """The studies of a QIDO-RS answer (DICOM JSON); records without a usable UID or count are
    logged and left out."""
    found: dict[str, Listed] = {}
    for record in records:
        uid, count = _value(record, _STUDY_UID), _value(record, _INSTANCES)
        try:
            sid = study_id_from_uid(str(uid or ""))
            instances = int(count)
        except (InvalidId, TypeError, ValueError):
            log.warning("PACS study record without a Study Instance UID or instance count left "
                        "out (fields present: %s)", sorted(record))
            continue
        found[sid] = Listed(str(uid).strip(), sid, instances)
    return sorted(found.values(), key=lambda s: s.study_id)


def due_studies(seen: Mapping[str, Mapping[str, Any]], listing: Mapping[str, int],
                now: datetime, stable_minutes: float
                ) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(study ids whose instance count has been unchanged for stable_minutes, the new record).

    ``seen`` maps study id -> ``{"instances": n, "since": ISO time first seen with n}``;
    ``listing`` maps study id -> instance count now. A study listed for the first time or with
    another count is seen since now; studies no longer listed leave the record. Due studies come
    longest stable first.
    """
    if stable_minutes < 0:
        raise ValueError(f"stable_minutes must be at least 0, received {stable_minutes!r}")
    stable = timedelta(minutes=stable_minutes)
    record: dict[str, dict[str, Any]] = {}
    due: list[tuple[datetime, str]] = []
    for sid, count in listing.items():
        before = seen.get(sid) or {}
        since = now
        if before.get("instances") == count:
            try:
                since = min(datetime.fromisoformat(str(before["since"])), now)
            except (KeyError, ValueError):
                since = now
        record[sid] = {"instances": int(count), "since": since.isoformat()}
        if now - since >= stable:
            due.append((since, sid))
    return [sid for _, sid in sorted(due)], record


# --- I/O ---
def client_from_settings(settings: Settings) -> DICOMwebClient:
    """A DICOMweb client of the PACS the settings name (basic authentication, timeouts)."""
    import requests
    from dicomweb_client import DICOMwebClient

    if not settings.dicomweb_url:
        raise PacsError("no PACS configured: set dicomweb_url (BRAIN_TUMOR_DICOMWEB_URL) or "
                        "dicomweb_conn_id (an Airflow connection)")
    quiet = logging.getLogger("dicomweb_client")
    if quiet.level == logging.NOTSET:  # its INFO lines name Study Instance UIDs
        quiet.setLevel(logging.WARNING)
    session = requests.Session()
    if settings.dicomweb_username:
        password = settings.dicomweb_password
        session.auth = (settings.dicomweb_username,
                        "" if password is None else password.get_secret_value())
    timeout = settings.dicomweb_timeout_s
    return DICOMwebClient(settings.dicomweb_url.rstrip("/"), session=session,
                          timeout=(min(timeout, 10.0), timeout))


class Pacs:
    """One PACS, over DICOMweb."""

    def __init__(self, client: DICOMwebClient) -> None:
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> Pacs:
        """The PACS of ``dicomweb_url`` (see ``client_from_settings``)."""
        return cls(client_from_settings(settings))

    def candidates(self, window_days: float, now: datetime) -> list[Listed]:
        """The studies whose StudyDate lies within window_days before now (QIDO-RS)."""
        records = self.client.search_for_studies(
            search_filters={"StudyDate": date_range(window_days, now)},
            fields=["StudyInstanceUID", "NumberOfStudyRelatedInstances"], get_remaining=True)
        return parse_studies(records)

    def instances(self, study_uid: str, modality: str | None = None) -> list[dict[str, Any]]:
        """The instances of a study (QIDO-RS, DICOM JSON), of one modality if given."""
        filters = {"Modality": modality} if modality else None
        return self.client.search_for_instances(study_instance_uid=study_uid,
                                                search_filters=filters, get_remaining=True)

    def retrieve(self, study_uid: str, folder: Path) -> int:
        """Write every instance of a study into folder, one file each (WADO-RS); how many."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        count = 0
        for count, ds in enumerate(self.client.iter_study(study_uid), start=1):
            ds.save_as(folder / f"{count:06d}.dcm", enforce_file_format=True)
        return count

    def send(self, data: bytes) -> str:
        """Store one DICOM object (its Part 10 bytes) in the PACS (STOW-RS); its SOP Instance
        UID. PacsError when the PACS refuses it."""
        from pydicom import dcmread

        ds = dcmread(BytesIO(data))
        answer = self.client.store_instances([ds])
        failed = getattr(answer, "FailedSOPSequence", None)
        if failed:
            reasons = [getattr(item, "FailureReason", None) for item in failed]
            raise PacsError(f"the PACS refused the object (failure reasons {reasons})")
        return str(ds.SOPInstanceUID)


def seen_key(settings: Settings) -> str:
    """Key of the record of what the PACS listed (``incoming/_pacs_seen.json``)."""
    return settings.key("incoming", SEEN_NAME)


def load_seen(store: ObjectStore, settings: Settings) -> dict[str, Any]:
    """The record of what the PACS listed before ({} when none, or unreadable: logged)."""
    key = seen_key(settings)
    try:
        seen = store.get_json(key)
    except KeyNotFound:
        return {}
    except StorageError as exc:
        log.warning("%s; studies are seen anew", exc)
        return {}
    studies = seen.get("studies") if isinstance(seen, dict) else None
    return studies if isinstance(studies, dict) else {}


def pull(store: ObjectStore, settings: Settings, model_version: str,
         now: datetime | None = None, pacs: Pacs | None = None) -> PullReport:
    """Fetch the PACS's due studies into ``incoming/`` (see the module docstring)."""
    from brain_tumor.store.incoming import IncomingStore
    from brain_tumor.store.scores import ScoreStore

    when = now or datetime.now(UTC)
    pacs = pacs or Pacs.from_settings(settings)
    listed = {s.study_id: s for s in pacs.candidates(settings.dicomweb_window_days, when)}
    due, record = due_studies(load_seen(store, settings),
                              {sid: s.instances for sid, s in listed.items()}, when,
                              settings.dicomweb_stable_minutes)
    store.put_json(seen_key(settings), {"updated_at": when.isoformat(), "studies": record})
    incoming = IncomingStore(store, settings)
    states = incoming.states()
    done = ScoreStore(store, settings).done_ids(model_version)
    counts = {"done": 0, "present": 0, "fetched": 0, "deferred": 0, "failed": 0}
    for sid in due:
        study, state = listed[sid], states.get(sid)
        if sid in done:
            counts["done"] += 1
        elif state is not None and state.sealed and state.files - 1 == study.instances:
            counts["present"] += 1
        elif counts["fetched"] + counts["failed"] >= settings.scoring_max_studies_per_run:
            counts["deferred"] += 1
        elif _fetch(pacs, incoming, study):
            counts["fetched"] += 1
        else:
            counts["failed"] += 1
    report = PullReport(listed=len(listed), due=len(due), arriving=len(listed) - len(due),
                        **counts)
    log.info("PACS: %d stud(ies) in the %.1f-day StudyDate window, %d due (%d still arriving): "
             "%d fetched, %d in incoming/ already, %d scored already, %d left for the next run, "
             "%d failed", report.listed, settings.dicomweb_window_days, report.due,
             report.arriving, report.fetched, report.present, report.done, report.deferred,
             report.failed)
    return report


def _fetch(pacs: Pacs, incoming: IncomingStore, study: Listed) -> bool:
    """Retrieve one study and submit it to incoming/; False (logged) when that failed."""
    import requests

    from brain_tumor.scoring.clinical.dicom_submit import upload_dicom_study

    try:
        with tempfile.TemporaryDirectory(prefix="pacs-") as tmp:
            retrieved = pacs.retrieve(study.study_uid, Path(tmp))
            sid, stored = upload_dicom_study(incoming, Path(tmp), study_id=study.study_id,
                                             io_workers=incoming.settings.io_workers)
    except requests.RequestException as exc:  # its text holds the URL, hence the study's UID
        status = getattr(exc.response, "status_code", None)
        log.error("PACS study %s could not be fetched (tried again next run): %s%s",
                  study.study_id, type(exc).__name__, f", HTTP {status}" if status else "")
        return False
    except (ValueError, PacsError, StorageError) as exc:
        log.error("PACS study %s could not be fetched (tried again next run): %s: %s",
                  study.study_id, type(exc).__name__, exc)
        return False
    if stored != study.instances:
        log.warning("PACS study %s: %d instance(s) listed, %d retrieved, %d stored", sid,
                    study.instances, retrieved, stored)
    log.info("PACS study %s fetched into incoming/: %d instance(s)", sid, stored)
    return True
