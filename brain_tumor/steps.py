"""Pipeline steps as small functions: settings in, JSON-ready dicts out.

The CLI and the Airflow tasks both call these, so a DAG task and a command line do the same
thing. Each builds its S3 client from the settings it is given.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from brain_tumor import telemetry
from brain_tumor.evaluation import catalog
from brain_tumor.ingest.exports import export_states
from brain_tumor.ingest.run import IngestError, ingest_exports
from brain_tumor.ingest.split import SplitConfig, assign_split, split_counts
from brain_tumor.settings import Settings
from brain_tumor.store.datasets import REJECTED, DatasetStore
from brain_tumor.store.manifests import describe_incomplete, overdue
from brain_tumor.store.storage import ObjectStore

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> ObjectStore:
    """The project's bucket, created if missing."""
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    return store


def new_exports(settings: Settings) -> list[str]:
    """Complete export ids in storage that the ledger has not seen (rejected ones are not new),
    oldest name first. Folders without their manifest are left out and logged; those whose
    newest file is older than ``incomplete_after_minutes`` with a warning."""
    store = open_store(settings)
    entries = DatasetStore(store, settings).entries()
    states = export_states(store, settings)
    stored = sorted(e for e, state in states.items() if state.sealed)
    incomplete = {e: state for e, state in states.items()
                  if not state.sealed and e not in entries}  # ledger ones were taken already
    if incomplete:
        now = datetime.now(UTC)
        late = overdue(incomplete, now, settings.incomplete_after_minutes)
        log.info("%d incomplete export(s) (no manifest yet) left out: %s", len(incomplete),
                 sorted(incomplete))
        for export_id in late:
            log.warning("%s for over %g minutes: not taken in (`brain-tumor upload` resumes "
                        "an interrupted upload; `brain-tumor exports seal %s` completes a folder "
                        "copied by another tool)",
                        describe_incomplete("export", export_id, states[export_id], now),
                        settings.incomplete_after_minutes, export_id)
    found = [e for e in stored if e not in entries]
    rejected = sorted(e for e in stored if entries.get(e, {}).get("status") == REJECTED)
    log.info("%d export(s) in storage, %d new: %s", len(stored), len(found), found)
    if rejected:
        log.warning("%d rejected export(s) wait for `brain-tumor exports retry|reject`: %s",
                    len(rejected), rejected)
    return found


def ingest(settings: Settings, export_ids: list[str], progress: bool = False) -> dict[str, Any]:
    """Ingest exports in order; returns the final dataset version, per-export results and the
    exports not taken in (``rejected``: export_id, reason, recorded in the ledger or not).

    A bad export is recorded as rejected and the others go on; IngestError only when exports
    were given and none of them could be taken in.
    """
    run = ingest_exports(open_store(settings), settings, export_ids, progress=progress)
    rejected = [{"export_id": r.export_id, "reason": r.reason, "recorded": r.recorded}
                for r in run.rejected]
    if export_ids and not run.results:
        raise IngestError(f"no export could be ingested ({len(rejected)} of {len(export_ids)} "
                          "not taken in): " + "; ".join(f"{r['export_id']}: {r['reason']}"
                                                        for r in rejected))
    results = [{"export_id": res.export_id, "dataset_version": res.dataset_version,
                "already_ingested": res.already_ingested, "status": res.status,
                "note": res.note, **res.counts,
                "quarantine": res.quarantine[["path", "reason", "detail"]]
                .to_dict(orient="records")} for res in run.results]
    version = run.results[-1].dataset_version if run.results else None
    return {"dataset_version": version, "exports": results, "rejected": rejected}


def split_config(settings: Settings) -> SplitConfig:
    """The split settings as a SplitConfig."""
    return SplitConfig(train=settings.split_train, val=settings.split_val, test=settings.split_test,
                       seed=settings.split_seed, min_tumor_slices=settings.split_min_tumor_slices)


def split(settings: Settings, dataset_version: str | None = None) -> dict[str, Any]:
    """Split a dataset version (default HEAD) by patient, stable against its ancestors."""
    datasets = DatasetStore(open_store(settings), settings)
    version = datasets.resolve(dataset_version)
    table = assign_split(datasets.manifest(version), split_config(settings),
                         datasets.previous_split(version))
    written = datasets.write_split(version, table)
    counts = split_counts(table)
    log.info("dataset %s split (%s):\n%s", version, "written" if written else "unchanged", counts)
    return {"dataset_version": version, "written": written,
            "splits": counts.reset_index(names="split").to_dict(orient="records")}


def train(settings: Settings, dataset_version: str | None = None,
          verbose: int = 2) -> dict[str, Any]:
    """Train a model version on a dataset version (default HEAD); returns its model.json."""
    import time

    from brain_tumor.ml.train import train_model

    clock = time.perf_counter()
    record = train_model(open_store(settings), settings, dataset_version, verbose=verbose)
    telemetry.report_training(settings, time.perf_counter() - clock)
    return record


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The few numbers people and gates look at first (the catalog's headline metrics)."""
    return catalog.headline(metrics)


def evaluate(settings: Settings, model_version: str, dataset_version: str | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Evaluate a model version on the test patients of a dataset version (default: its own)."""
    from brain_tumor.evaluation.run import evaluate_model_version

    store = open_store(settings)
    metrics = evaluate_model_version(store, settings, model_version, dataset_version,
                                     progress=progress)
    _mirror_evaluation(settings, store, model_version, metrics)
    return {"model_version": model_version, "dataset_version": metrics["dataset_version"],
            "threshold": metrics["threshold"], **headline(metrics)}


def _mirror_evaluation(settings: Settings, store: ObjectStore, model_version: str,
                       metrics: dict[str, Any]) -> None:
    """Add an evaluation, its plots and model card to the model's MLflow run (when tracking)."""
    from brain_tumor import tracking
    from brain_tumor.store.modelstore import ModelStore

    if not tracking.enabled(settings):
        return
    dataset_version = metrics["dataset_version"]
    prefix = ModelStore(store, settings).evaluation_key(model_version, dataset_version, "") + "/"
    files = {info.key[len(prefix):]: store.get(info.key) for info in store.list(prefix)
             if info.key.endswith((".png", ".md"))}
    tracking.log_evaluation(settings, model_version, dataset_version, metrics, files)


def expected_model_version(settings: Settings, dataset_version: str) -> str:
    """The model version that training these settings on the dataset version publishes."""
    from brain_tumor.ml.train import model_version_id
    from brain_tumor.store.modelstore import ModelNotFound, ModelStore

    version = model_version_id(dataset_version, settings)
    if not ModelStore(open_store(settings), settings).exists(version):
        raise ModelNotFound(f"training did not publish model version {version} for dataset "
                            f"{dataset_version} (check the train task's log)")
    return version


def champion(settings: Settings) -> str | None:
    """The current champion model version (None before the first promotion)."""
    from brain_tumor.store.registry import Registry

    return Registry(open_store(settings), settings).champion()


def gate(settings: Settings, candidate: str, dataset_version: str,
         champion_version: str | None) -> dict[str, Any]:
    """Gate a candidate: floors, and no regression against the champion re-evaluated on the
    candidate's test patients. Stores models/<candidate>/gate/<dataset_version>.json; returns
    the result."""
    from brain_tumor.evaluation.gate import GateConfig, explain, run_gate
    from brain_tumor.store.modelstore import ModelStore
    from brain_tumor.store.schemas import validate_record

    cand = evaluate(settings, candidate, dataset_version)
    champ = evaluate(settings, champion_version, dataset_version) if champion_version else None
    strip = ("model_version", "dataset_version", "threshold")
    result = run_gate({k: v for k, v in cand.items() if k not in strip},
                      None if champ is None else {k: v for k, v in champ.items() if k not in strip},
                      GateConfig.from_settings(settings), model_version=candidate,
                      champion_version=champion_version)
    result.update(dataset_version=dataset_version, explanation=explain(result),
                  candidate_metrics=cand, champion_metrics=champ)
    store = open_store(settings)
    key = ModelStore(store, settings).key(candidate, "gate", f"{dataset_version}.json")
    if not store.put_json(key, validate_record("gate_result", result), new=True):
        log.info("gate result %s exists already (re-run); keeping the first", key)
    log.info("gate for %s: %s", candidate, result["explanation"])
    telemetry.report_gate(settings, result)
    return result


def decide(settings: Settings, gate_result: dict[str, Any],
           run_id: str | None = None) -> dict[str, Any]:
    """Promote a candidate that passed the gate, else record its rejection; returns the event."""
    from brain_tumor.store.registry import Registry

    candidate = gate_result["model_version"]
    metrics = gate_result.get("candidate_metrics")
    if gate_result["passed"]:
        return promote(settings, candidate, reason="passed the gate: " +
                       gate_result["explanation"], metrics=metrics,
                       dataset_version=gate_result["dataset_version"], run_id=run_id,
                       expected_champion=gate_result["champion_version"])
    registry = Registry(open_store(settings), settings)
    return registry.reject(candidate, reason=gate_result["explanation"], metrics=metrics,
                           dataset_version=gate_result["dataset_version"], run_id=run_id)


def promote(settings: Settings, model_version: str, *, reason: str,
            run_id: str | None = None, **options: Any) -> dict[str, Any]:
    """Make a model version the champion (registry event, then the MLflow mirror); the event.

    ``options`` go to ``Registry.promote`` (metrics, dataset_version, expected_champion).
    """
    from brain_tumor.store.registry import Registry

    event = Registry(open_store(settings), settings).promote(model_version, reason=reason,
                                                              run_id=run_id, **options)
    _mirror_champion(settings, event)
    return event


def rollback(settings: Settings, *, reason: str, run_id: str | None = None) -> dict[str, Any]:
    """Return to the previous champion (registry event, then the MLflow mirror); the event."""
    from brain_tumor.store.registry import Registry

    event = Registry(open_store(settings), settings).rollback(reason=reason, run_id=run_id)
    _mirror_champion(settings, event)
    return event


def _mirror_champion(settings: Settings, event: dict[str, Any]) -> None:
    """Mirror a committed champion move to MLflow (when tracking); never raises."""
    from brain_tumor.tracking import mirror_champion

    mirror_champion(settings, event)


def score(settings: Settings, study_ids: list[str] | None = None,
          model_version: str | None = None) -> dict[str, Any]:
    """Score studies under incoming/ (default: all) with a model version (default: champion)."""
    from brain_tumor.scoring.contracts import StudyRejected
    from brain_tumor.scoring.engines import load_engine
    from brain_tumor.scoring.study import build_pipeline
    from brain_tumor.store.incoming import IncomingStore

    store = open_store(settings)
    version = model_version or _champion_or_fail(settings)
    pipeline = build_pipeline(store, settings, load_engine(store, settings, version))
    results, rejected = [], []
    for study_id, outcome in pipeline.score_many(study_ids
                                                 or IncomingStore(store, settings).study_ids()):
        if isinstance(outcome, StudyRejected):
            log.warning("study %s quarantined: %s", study_id, outcome)
            rejected.append({"study_id": study_id, "reason": outcome.reason,
                             "detail": outcome.detail})
        elif isinstance(outcome, Exception):
            raise outcome
        else:
            results.append(outcome)
    return {"model_version": version, "studies": results, "quarantined": rejected}


class NoChampion(RuntimeError):
    """Scoring was asked for but no model has been promoted yet."""


def _champion_or_fail(settings: Settings) -> str:
    version = champion(settings)
    if version is None:
        raise NoChampion("no champion model yet: promote one (retrain_nightly, or "
                         "`brain-tumor registry promote MODEL_VERSION`) or pass --model-version")
    return version


def plan_scoring(settings: Settings, now: datetime | None = None,
                 study_ids: list[str] | None = None,
                 model_version: str | None = None) -> dict[str, Any]:
    """The model and the incoming studies one scoring run takes on (brain_tumor.scoring.batch).

    The model is the champion unless ``model_version`` names another. Given ``study_ids``, the
    plan holds only those (all must be under incoming/), without the per-run cap or the
    re-scoring window; those the model scored or quarantined already are left out as usual.

    With ``scoring_source`` ``dicomweb`` (and no ``study_ids``) the PACS's due studies are
    fetched into incoming/ first (``brain_tumor.store.pacs.pull``); the plan's ``pacs`` says
    how many it listed, were due, still arriving, fetched (None for the other source).
    """
    from dataclasses import replace

    from brain_tumor.scoring.batch import plan_batch, scan
    from brain_tumor.store.ids import check_model_version, check_study_id
    from brain_tumor.store.modelstore import ModelStore

    store = open_store(settings)
    if model_version is None:
        version = _champion_or_fail(settings)
    else:
        version = check_model_version(model_version)
        ModelStore(store, settings).record(version)  # ModelNotFound when it was not published
    pacs = _pull_from_pacs(settings, store, version, now) if study_ids is None else None
    inventory = scan(store, settings, version)
    window, limit = settings.rescore_window_days, settings.scoring_max_studies_per_run
    if study_ids is not None:
        wanted = list(dict.fromkeys(check_study_id(sid) for sid in study_ids))
        unknown = [sid for sid in wanted if sid not in inventory.arrived]
        if unknown:
            raise ValueError(f"no such studies under {settings.key('incoming')}: received "
                             f"{unknown}")
        inventory = replace(inventory, arrived={sid: inventory.arrived[sid] for sid in wanted},
                            scored_before=set())
        limit = len(wanted)
    when = now or datetime.now(UTC)
    plan = plan_batch(version, inventory, when, window, limit)
    log.info("scoring plan with %s: %d due now, %d deferred to later runs, %d already done, "
             "%d quarantined before, %d outside the %.1f-day re-scoring window", version,
             len(plan.study_ids), plan.deferred, plan.already_done, plan.quarantined_before,
             plan.outside_window, window)
    return {**plan.as_dict(), "pacs": pacs}


def _pull_from_pacs(settings: Settings, store: ObjectStore, model_version: str,
                    now: datetime | None) -> dict[str, int] | None:
    """Fetch the PACS's due studies into incoming/ when scoring from a PACS; the counts."""
    if settings.scoring_source != "dicomweb":
        return None
    from brain_tumor.store.pacs import pull

    return pull(store, settings, model_version, now).as_dict()


def score_chunk(settings: Settings, model_version: str,
                study_ids: list[str]) -> dict[str, Any]:
    """Score a chunk of studies with one load of the model version, reading one study ahead.

    Each study is all-or-nothing: a rejected one is quarantined and reported; one that fails
    otherwise (a storage outage, say) is logged and listed under ``failed`` while the others go
    on. Returns ``{"results": [...], "failed": [{"study_id", "error"}], "load_s": seconds}``.
    """
    import time

    from brain_tumor.scoring.contracts import StudyRejected
    from brain_tumor.scoring.engines import load_engine
    from brain_tumor.scoring.study import build_pipeline

    store = open_store(settings)
    clock = time.perf_counter()
    pipeline = build_pipeline(store, settings, load_engine(store, settings, model_version))
    load_s = time.perf_counter() - clock
    results: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for study_id, outcome in pipeline.score_many(study_ids):
        if isinstance(outcome, StudyRejected):
            results.append({"study_id": study_id, "status": "quarantined",
                            "reason": outcome.reason, "detail": outcome.detail})
        elif isinstance(outcome, Exception):  # reported per study; the task fails after the others
            log.error("study %s failed; the chunk goes on", study_id, exc_info=outcome)
            failed.append({"study_id": study_id,
                           "error": f"{type(outcome).__name__}: {outcome}"})
        else:
            results.append(outcome)
    log.info("chunk of %d studies with %s: model loaded in %.2fs, %d done, %d failed",
             len(study_ids), model_version, load_s, len(results), len(failed))
    return {"results": results, "failed": failed, "load_s": round(load_s, 4)}


def finish_batch(settings: Settings, plan: dict[str, Any], results: list[dict[str, Any]],
                 run_id: str, started_at: str, trigger: str | None = None) -> dict[str, Any]:
    """Write the batch summary of a scoring run (with drift against the model version's
    out-of-distribution reference, when it has one); returns it."""
    from brain_tumor.ml.ood_reference import load_reference
    from brain_tumor.scoring.batch import slice_probabilities, summarize
    from brain_tumor.store.datasets import utc_now
    from brain_tumor.store.modelstore import ModelStore
    from brain_tumor.store.scores import ScoreStore
    from brain_tumor.store.storage import StorageError

    store = open_store(settings)
    reference, probabilities = None, []
    scored = [r["study_id"] for r in results if r.get("status") == "scored"]
    if scored:
        try:
            reference = load_reference(store, settings,
                                       ModelStore(store, settings).record(plan["model_version"]))
            if reference is not None:
                probabilities = slice_probabilities(store, settings, plan["model_version"],
                                                    scored)
        except (StorageError, ValueError, KeyError) as exc:
            reference = None
            log.warning("batch %s: no drift figures, the out-of-distribution reference of %s "
                        "or the batch's slice tables could not be read: %s", run_id,
                        plan["model_version"], exc)
    summary = summarize(plan, results, run_id, started_at, utc_now(), trigger, reference,
                        probabilities)
    key = ScoreStore(store, settings).write_batch(summary)
    log.info("batch %s: %d scored, %d skipped, %d quarantined, %d failed, %d deferred, "
             "%d with tumor, %d out of distribution -> %s", run_id, summary["studies_scored"],
             summary["studies_skipped"], summary["studies_quarantined"],
             summary["studies_failed"], summary["studies_deferred"], summary["tumors_found"],
             summary["studies_out_of_distribution"], key)
    if summary["drift"] and summary["drift"]["exceeded"]:
        log.warning("batch %s: drift over the PSI bound %s in %s", run_id,
                    summary["drift"]["psi_bound"], ", ".join(summary["drift"]["exceeded"]))
    telemetry.report_batch(settings, summary)
    return summary
