"""Scoring batches: which incoming studies one run scores, and the batch summary it leaves.

A study is due for the champion when it has no done marker and no quarantine record for it
(unless it was uploaded again after being quarantined). A study that some earlier champion
already scored is re-scored only if it arrived within ``rescore_window_days``: a champion change
refreshes recent results without re-scoring the whole archive. Due studies are taken oldest
first, at most ``scoring_max_studies_per_run`` per run; the rest wait for the next run.

Only complete studies are planned: those whose folder holds its manifest
(``brain_tumor.store.manifests``). The others are counted in the plan (``incomplete``), and
``scan`` logs a warning naming those whose newest file is older than
``incomplete_after_minutes`` (a submit killed half-way, a copy never sealed).

``plan_batch`` is pure; ``scan`` gathers its inputs with a handful of listings (one of
``incoming/``, one of each earlier champion's ``_done/`` folder, one of the quarantine folder),
so a run over a large archive costs listing pages, not one request per study.

The batch summary counts the studies flagged out of distribution and, when the model version has
an out-of-distribution reference, states drift (``batch_drift``): the population stability
index and Kolmogorov-Smirnov statistic of the batch's study OOD scores and of its slices'
probabilities against the model's validation slices, with the bound ``ood.PSI_BOUND``. A value
is judged against the bound only from ``DRIFT_MIN_SAMPLE`` values on (fewer say little).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from brain_tumor.scoring import ood
from brain_tumor.settings import Settings
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.manifests import describe_incomplete, overdue
from brain_tumor.store.registry import Registry
from brain_tumor.store.schemas import validate_record
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

log = logging.getLogger(__name__)

#: a drift value is judged against its bound only when the batch gives this many values
DRIFT_MIN_SAMPLE = 10
#: drift's compared values: (summary name, reference sample in ``Reference.validation``)
DRIFT_VALUES = (("ood_score", "study_score"), ("probability", "probability"))


@dataclass(frozen=True)
class Inventory:
    """What storage says about incoming studies and their results (inputs of plan_batch)."""

    arrived: dict[str, datetime]  # study id -> newest upload time of its objects
    done: set[str]  # studies the model version has scored
    quarantined: dict[str, datetime]  # study id -> when the model version quarantined it
    scored_before: set[str]  # studies an earlier champion scored
    #: study id -> newest upload time of a folder without its manifest (never planned)
    incomplete: dict[str, datetime | None] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchPlan:
    """The studies one run scores, and why the others are left out."""

    model_version: str
    study_ids: list[str]
    already_done: int = 0
    quarantined_before: int = 0
    outside_window: int = 0
    deferred: int = 0
    deferred_ids: list[str] = field(default_factory=list)
    incomplete: int = 0  # study folders without their manifest, left out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_batch(model_version: str, inventory: Inventory, now: datetime, window_days: float,
               limit: int) -> BatchPlan:
    """Pick the due studies, oldest arrival first, at most limit of them."""
    window_start = now - timedelta(days=window_days)
    due: list[str] = []
    done = quarantined = outside = 0
    for sid, arrived in sorted(inventory.arrived.items(), key=lambda kv: (kv[1], kv[0])):
        if sid in inventory.done:
            done += 1
        elif sid in inventory.quarantined and inventory.quarantined[sid] >= arrived:
            quarantined += 1
        elif sid in inventory.scored_before and arrived < window_start:
            outside += 1
        else:
            due.append(sid)
    return BatchPlan(model_version, due[:limit], already_done=done, quarantined_before=quarantined,
                     outside_window=outside, deferred=len(due[limit:]), deferred_ids=due[limit:],
                     incomplete=len(inventory.incomplete))


def scan(store: ObjectStore, settings: Settings, model_version: str,
         now: datetime | None = None) -> Inventory:
    """Gather plan_batch's inputs from storage; warn of incomplete studies older than
    ``incomplete_after_minutes`` at now (default: the current time)."""
    scores = ScoreStore(store, settings)
    states = IncomingStore(store, settings).states()
    when = now or datetime.now(UTC)
    late = overdue(states, when, settings.incomplete_after_minutes)
    if late:
        log.warning("%d incoming stud(ies) without a manifest for over %g minutes, not scored "
                    "(finish them with `brain-tumor submit`, or `brain-tumor studies seal ID` for "
                    "a folder copied by another tool): %s", len(late),
                    settings.incomplete_after_minutes,
                    "; ".join(describe_incomplete("study", sid, states[sid], when)
                              for sid in late[:20]))
    promoted = [e["model_version"] for e in Registry(store, settings).events()
                if e["action"] == "promoted" and e["model_version"] != model_version]
    scored_before: set[str] = set()
    for version in dict.fromkeys(promoted):
        scored_before |= set(scores.done_ids(version))
    return Inventory(arrived={sid: s.newest for sid, s in states.items()
                              if s.sealed and s.newest is not None},
                     done=set(scores.done_ids(model_version)),
                     quarantined=scores.quarantined_ids(model_version),
                     scored_before=scored_before,
                     incomplete={sid: s.newest for sid, s in states.items() if not s.sealed})


def chunks(study_ids: list[str], size: int) -> list[list[str]]:
    """The studies in order, cut into chunks of at most size (one mapped task each)."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, received {size}")
    return [study_ids[i:i + size] for i in range(0, len(study_ids), size)]


def batch_drift(reference: ood.Reference | None, scored: list[dict[str, Any]],
                probabilities: list[float]) -> dict[str, Any] | None:
    """PSI and KS of the scored studies' OOD scores and their slices' ``probabilities``
    against the reference's validation samples; None without a reference or a scored study."""
    if reference is None or not scored:
        return None
    samples = {"ood_score": [float(r["ood_score"]) for r in scored
                             if r.get("ood_score") is not None],
               "probability": [float(p) for p in probabilities]}
    drift: dict[str, Any] = {"psi_bound": ood.PSI_BOUND}
    for name, ref_name in DRIFT_VALUES:
        ref = reference.validation.get(ref_name)
        sample = samples[name]
        if ref is None or len(ref) < 10 or not sample:
            drift[name] = None
            continue
        drift[name] = {"psi": round(ood.psi(ref, sample), 4),
                       "ks": round(ood.ks_statistic(ref, sample), 4), "n": len(sample)}
    drift["exceeded"] = [name for name, _ in DRIFT_VALUES if drift[name] is not None
                         and drift[name]["n"] >= DRIFT_MIN_SAMPLE
                         and drift[name]["psi"] > ood.PSI_BOUND]
    return drift


def slice_probabilities(store: ObjectStore, settings: Settings, model_version: str,
                        study_ids: list[str]) -> list[float]:
    """The slice probabilities of scored studies, read from their ``slices.parquet``."""
    scores = ScoreStore(store, settings)

    def read(study_id: str) -> list[float]:
        table = store.get_parquet(scores.output_key(model_version, study_id, "slices.parquet"))
        return [float(p) for p in table["probability"]]

    with ThreadPoolExecutor(max_workers=settings.io_workers) as pool:
        return [p for probs in pool.map(read, study_ids) for p in probs]


def summarize(plan: dict[str, Any], results: list[dict[str, Any]], run_id: str,
              started_at: str, finished_at: str, trigger: str | None = None,
              reference: ood.Reference | None = None,
              probabilities: list[float] | None = None) -> dict[str, Any]:
    """The batch summary of one run from its plan and the per-study results (for drift:
    ``reference``, the model version's out-of-distribution reference, and ``probabilities``,
    the scored studies' slice probabilities)."""
    by_status: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_status.setdefault(result["status"], []).append(result)
    reported = {r["study_id"] for r in results}
    failed = sorted(set(plan["study_ids"]) - reported)
    scored = by_status.get("scored", [])
    quarantined = by_status.get("quarantined", [])
    timings = [r.get("timings") or {} for r in scored]
    record = {
        "run_id": run_id, "trigger": trigger, "model_version": plan["model_version"],
        "studies_planned": len(plan["study_ids"]),
        "studies_scored": len(scored),
        "studies_skipped": len(by_status.get("skipped", [])) + plan["already_done"],
        "studies_quarantined": len(quarantined),
        "studies_failed": len(failed),
        "studies_deferred": plan["deferred"],
        "studies_outside_window": plan["outside_window"],
        "tumors_found": sum(bool(r.get("tumor_present")) for r in scored),
        "slices_scored": sum(int(r.get("slices", 0)) for r in scored),
        "mean_max_probability": (sum(float(r["max_probability"]) for r in scored) / len(scored)
                                 if scored else None),
        "seconds": {k: round(sum(t.get(k, 0.0) for t in timings), 3)
                    for k in ("read_s", "model_s", "write_s")},
        "quarantined": [{"study_id": r["study_id"], "reason": r["reason"],
                         "detail": r["detail"]} for r in quarantined],
        "failed": failed,
        "started_at": started_at, "finished_at": finished_at,
        "studies_out_of_distribution": sum(bool(r.get("out_of_distribution")) for r in scored),
        "out_of_distribution": [{"study_id": r["study_id"], "ood_score": r.get("ood_score"),
                                 "reasons": r.get("ood_reasons") or []}
                                for r in scored if r.get("out_of_distribution")],
        "drift": batch_drift(reference, scored, probabilities or []),
    }
    return validate_record("batch_summary", record)
