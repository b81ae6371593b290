"""The `brain-tumor` command line: one subcommand per pipeline step.

Settings are loaded here, once, and passed down. Results are printed for people; ``--json``
prints them for programs (Airflow tasks read that).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from brain_tumor.settings import Settings, SettingsError, load_settings

log = logging.getLogger("brain_tumor.cli")

EPILOG = """Settings come from BRAIN_TUMOR_* environment variables and an optional TOML file
(--config or BRAIN_TUMOR_CONFIG); `brain-tumor settings` shows them all.
Typical first run:  brain-tumor storage up && brain-tumor synth /tmp/export1 &&
brain-tumor upload /tmp/export1 && brain-tumor ingest --new && brain-tumor split"""


def _store(settings: Settings):  # noqa: ANN202
    from brain_tumor.steps import open_store

    return open_store(settings)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


# --- commands ---
def cmd_storage(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor.devtools import embedded_s3

    server = embedded_s3.from_settings(settings)
    if args.action == "up":
        server.start()
    elif args.action == "down":
        if not server.stop():
            print("embedded S3 was not running")
            return 0
    state = {"running": server.running(), "pid": server.pid(), "endpoint": server.endpoint,
             "data_dir": str(server.data_dir), "log": str(server.log_file),
             "bucket": settings.s3_bucket}
    _emit(args, state, "\n".join(f"{k:9} {v}" for k, v in state.items()))
    return 0


def cmd_synth(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor.devtools.synth import SynthSpec, make_archive, make_export, make_studies

    spec = SynthSpec(patients=args.patients, slices=args.slices, size=args.size, seed=args.seed,
                     tumor_free_patients=args.tumor_free, bad=tuple(args.bad),
                     first_patient=args.first_patient)
    out = Path(args.out)
    if args.studies:
        folders = make_studies(out, spec)
        _emit(args, {"studies": [str(f) for f in folders]},
              f"wrote {len(folders)} studies (slices without masks) to {out}; "
              f"submit them with: brain-tumor submit {out}/*")
        return 0
    report = make_export(out, spec)
    archive = make_archive(out, Path(args.archive)) if args.archive else None
    data = {"root": str(report.root), "patients": len(report.patients), "slices": report.slices,
            "tumor_slices": report.tumor_slices, "bad_files": report.bad_files,
            "archive": str(archive) if archive else None}
    _emit(args, data, f"wrote {len(report.patients)} patients, {report.slices} slices "
                      f"({report.tumor_slices} with tumor), {len(report.bad_files)} bad files "
                      f"to {out}" + (f"; archive {archive}" if archive else ""))
    return 0


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor.scoring.clinical.dicom_submit import is_dicom_source, upload_dicom_study
    from brain_tumor.scoring.readers import upload_study
    from brain_tumor.store.incoming import IncomingStore

    incoming = IncomingStore(_store(settings), settings)
    rows = []
    for path in map(Path, args.folders):
        study_id = args.study_id if len(args.folders) == 1 else None
        if is_dicom_source(path):
            sid, count = upload_dicom_study(incoming, path, study_id,
                                            io_workers=settings.io_workers)
            rows.append({"study_id": sid, "format": "dicom", "files": count})
        else:
            sid, count = upload_study(incoming, path, study_id, io_workers=settings.io_workers)
            rows.append({"study_id": sid, "format": "tiff", "slices": count})
    _emit(args, rows, "\n".join(
        f"submitted {r['study_id']}: " + (f"{r['slices']} slices" if "slices" in r else
                                          f"{r['files']} DICOM objects") + " to incoming/"
        for r in rows))
    return 0


def _seal(args: argparse.Namespace, kind: str,
          incomplete: Callable[[], dict[str, Any]],
          seal: Callable[[str], tuple[dict[str, Any], bool]]) -> int:
    """List the folders of a kind without a manifest, or seal the named ones (or --all)."""
    from datetime import UTC, datetime

    from brain_tumor.store.manifests import describe_incomplete

    targets = list(dict.fromkeys(args.ids))
    if args.all:
        targets += [i for i in sorted(incomplete()) if i not in targets]
    elif not targets:
        now = datetime.now(UTC)
        states = incomplete()
        rows = [{"id": i, "files": s.files, "newest": s.newest} for i, s in sorted(states.items())]
        _emit(args, rows, "\n".join(describe_incomplete(kind, i, s, now)
                                    for i, s in sorted(states.items()))
              or f"every {kind} folder has its manifest")
        return 0
    rows = []
    for folder_id in targets:
        record, written = seal(folder_id)
        rows.append({"id": folder_id, "files": record["file_count"],
                     "bytes": record["total_bytes"], "sealed": written})
    _emit(args, rows, "\n".join(
        f"{'sealed' if r['sealed'] else 'complete already:'} {kind} {r['id']}: {r['files']} "
        f"file(s), {r['bytes']} bytes" for r in rows) or f"no {kind} folder without a manifest")
    return 0


def cmd_exports_seal(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor.ingest.exports import incomplete_exports, seal_export

    store = _store(settings)
    return _seal(args, "export", lambda: incomplete_exports(store, settings),
                 lambda export_id: seal_export(store, settings, export_id))



def _add_seal(actions: Any, what: str, manifest: str, taker: str,
              metavar: str) -> argparse.ArgumentParser:
    """The ``seal`` sub-action of the exports and studies commands."""
    help_ = (f"Complete {what} folders copied by another tool: write each one's manifest "
             f"({manifest}) from what is stored, so {taker} takes it. Without ids, list the "
             f"folders that have no manifest. Seal a folder only once the copy has finished.")
    q = actions.add_parser("seal", help=help_, description=help_)
    q.add_argument("ids", nargs="*", metavar=metavar)
    q.add_argument("--all", action="store_true",
                   help=f"seal every folder without a manifest (upgrade: {what} folders "
                        f"uploaded before manifests existed)")
    return q

def cmd_studies(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from brain_tumor.store.incoming import IncomingStore

    incoming = IncomingStore(_store(settings), settings)
    if args.action == "seal":
        return _seal(args, "study", incoming.incomplete, incoming.seal)
    now = datetime.now(UTC)
    rows = [{"study_id": sid, "complete": s.sealed, "files": s.files, "newest": s.newest,
             "age_minutes": None if s.newest is None else
             round((now - s.newest).total_seconds() / 60, 1)}
            for sid, s in sorted(incoming.states().items())]
    text = "\n".join(f"{r['study_id']:30} {'complete' if r['complete'] else 'INCOMPLETE':10} "
                     f"{r['files']:5} file(s), newest {r['age_minutes']} minutes old"
                     for r in rows)
    _emit(args, rows, text or "no studies under incoming/")
    return 0


def cmd_upload(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor.ingest.exports import upload_export

    export_id = upload_export(_store(settings), settings, Path(args.path), args.export_id,
                              progress=not args.json)
    _emit(args, {"export_id": export_id}, f"uploaded export {export_id}")
    return 0


def cmd_exports(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor.ingest.exports import check_export_id, list_exports
    from brain_tumor.store.datasets import DatasetStore

    store = _store(settings)
    datasets = DatasetStore(store, settings)
    if args.action == "reject":
        from brain_tumor.ingest.run import reject_export

        export_id = check_export_id(args.export_id)
        if not reject_export(store, settings, export_id, f"by an operator: {args.reason}"):
            entry = datasets.entry(export_id)
            raise ValueError(f"export {export_id!r} " + (
                "not found in storage" if entry is None else
                f"is {entry['status']} in {entry['dataset_version']}: only an export not taken "
                "in can be rejected"))
        _emit(args, datasets.entry(export_id), f"export {export_id} rejected: {args.reason}")
        return 0
    if args.action == "retry":
        export_id = check_export_id(args.export_id)
        entry = datasets.clear_rejection(export_id)
        _emit(args, {"export_id": export_id, "was": entry},
              f"export {export_id} is new again (was rejected: {entry['reason']}); "
              "`brain-tumor ingest --new` or the next nightly run takes it in")
        return 0
    entries = datasets.entries()
    rows = [{"export_id": e, "status": entries.get(e, {}).get("status", "new"),
             "dataset_version": entries.get(e, {}).get("dataset_version"),
             "reason": entries.get(e, {}).get("reason")}
            for e in list_exports(store, settings)]
    if args.new:
        rows = [r for r in rows if r["status"] in ("new", "rejected")]
    text = "\n".join(f"{r['export_id']:30} {'NEW' if r['status'] == 'new' else r['status']:9} "
                     f"{r['dataset_version'] or '-':15} {r['reason'] or ''}".rstrip()
                     for r in rows)
    _emit(args, rows, text or "no exports")
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor import steps

    ids = list(args.export_ids)
    if args.new:
        ids += [e for e in steps.new_exports(settings) if e not in ids]
    if not ids:
        _emit(args, {"dataset_version": None, "exports": []}, "no new exports to ingest")
        return 0
    result = steps.ingest(settings, ids, progress=not args.json)
    lines = []
    for r in result["exports"]:
        state = "already ingested in" if r["already_ingested"] else "->"
        lines.append(f"{r['export_id']} {state} {r['dataset_version']}: "
                     + ", ".join(f"{k} {r[k]}" for k in ("files", "slices", "accepted",
                                                          "quarantined", "added", "changed")
                                 if k in r))
        lines += [f"  quarantined {q['path']}: {q['reason']} ({q['detail']})"
                  for q in r["quarantine"]]
    _emit(args, result, "\n".join(lines))
    return 0


def cmd_split(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor import steps

    result = steps.split(settings, args.dataset_version)
    table = "\n".join(f"  {r['split']:6} patients {r['patients']:4}  slices {r['slices']:6}  "
                       f"tumor slices {r['tumor_slices']:5}" for r in result["splits"])
    _emit(args, result, f"dataset {result['dataset_version']}: split "
                        f"{'written' if result['written'] else 'unchanged'}\n{table}")
    return 0


def _use_backend(settings: Settings) -> None:
    """Select the Keras backend before Keras is imported (settings decide unless env does)."""
    os.environ.setdefault("KERAS_BACKEND", settings.keras_backend)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor import steps

    _use_backend(settings)
    if args.json:  # Keras stays quiet (stdout is the JSON): each epoch is logged on stderr
        logging.getLogger("brain_tumor.ml.train").setLevel(logging.INFO)
    record = steps.train(settings, args.dataset_version, verbose=0 if args.json else
                         (1 if sys.stdout.isatty() else 2))
    _emit(args, record, f"model version {record['model_version']} (dataset "
                        f"{record['dataset_version']}, threshold {record['threshold']:.3f}, best "
                        f"epochs {record['best_epochs']})")
    return 0


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor import steps

    _use_backend(settings)
    result = steps.evaluate(settings, args.model_version, args.dataset_version,
                            progress=not args.json)
    lines = [f"model {result['model_version']} on the test patients of "
             f"{result['dataset_version']} (threshold {result['threshold']:.3f} from validation)"]
    lines += [f"  {k:34} {'n/a' if v is None else f'{v:.3f}'}" for k, v in result.items()
              if k not in ("model_version", "dataset_version", "threshold")]
    _emit(args, result, "\n".join(lines))
    return 0


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor import steps

    _use_backend(settings)
    result = steps.score(settings, args.study_ids or None, args.model_version)
    lines = [f"model {result['model_version']}"]
    lines += [f"  {r['study_id']:24} {r['status']:8} "
              f"tumor {'yes' if r['tumor_present'] else 'no ':3} "
              f"slices {r['tumor_slices']}/{r['slices']}  "
              f"volume {r['tumor_volume_voxels']} voxels  "
              f"max p {r['max_probability']:.2f}" for r in result["studies"]]
    lines += [f"  {q['study_id']:24} QUARANTINED {q['reason']}: {q['detail']}"
              for q in result["quarantined"]]
    _emit(args, result, "\n".join(lines))
    return 1 if result["quarantined"] and not result["studies"] else 0


def cmd_batches(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor.store.scores import ScoreStore

    rows = ScoreStore(_store(settings), settings).batches(args.limit)
    lines = [f"{r['finished_at']}  {r['run_id']:44} {r['model_version']}  scored "
             f"{r['studies_scored']}, skipped {r['studies_skipped']}, quarantined "
             f"{r['studies_quarantined']}, failed {r['studies_failed']}, deferred "
             f"{r['studies_deferred']}, tumors {r['tumors_found']}" for r in rows]
    lines += [f"    quarantined {q['study_id']}: {q['reason']}: {q['detail']}"
              for r in rows[:1] for q in r["quarantined"]]
    _emit(args, rows, "\n".join(lines) or "no scoring batches yet")
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor.store.modelstore import ModelStore

    models = ModelStore(_store(settings), settings)
    records = [models.record(v) for v in models.versions()]
    text = "\n".join(f"{r['model_version']}  {r['created_at']}  dataset {r['dataset_version']}  "
                     f"{r['backbone']}@{r['image_size']}  threshold {r['threshold']:.3f}"
                     for r in records)
    _emit(args, records, text or "no model versions yet")
    return 0


def cmd_registry(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor import steps
    from brain_tumor.store.registry import Registry

    registry = Registry(_store(settings), settings)
    if args.action == "list":
        events = registry.events()
        champion = registry.champion()
        lines = [f"champion: {champion or 'none yet'}"]
        lines += [f"{e['seq']:4}  {e['at']}  {e['action']:11} {e['model_version']}  "
                  f"{e['reason'].splitlines()[0] if e['reason'] else ''}" for e in events]
        _emit(args, {"champion": champion, "events": events}, "\n".join(lines))
        return 0
    if args.action == "show":
        if not args.model_version:
            raise ValueError("registry show needs a MODEL_VERSION")
        info = registry.show(args.model_version)
        lines = [f"{args.model_version}{'  (champion)' if info['champion'] else ''}",
                 *(f"  {k:16} {v}" for k, v in info["model"].items())]
        lines += [f"  event {e['seq']}: {e['action']} at {e['at']}: {e['reason']}"
                  for e in info["events"]]
        _emit(args, info, "\n".join(lines))
        return 0
    if args.action == "repair":
        champion = registry.repair()
        _emit(args, {"champion": champion, "pointer": registry.pointer_key},
              f"champion pointer {registry.pointer_key} names {champion or 'no champion yet'}")
        return 0
    reason = args.reason or f"manual {args.action} from the command line"
    if args.action == "promote":
        if not args.model_version:
            raise ValueError("registry promote needs a MODEL_VERSION")
        event = steps.promote(settings, args.model_version, reason=reason, run_id="cli")
    else:
        event = steps.rollback(settings, reason=reason, run_id="cli")
    _emit(args, event, f"{event['action']} {event['model_version']} "
                       f"(was {event['previous_champion']}): {event['reason']}")
    return 0


def cmd_datasets(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor.store.datasets import DatasetStore

    datasets = DatasetStore(_store(settings), settings)
    version = datasets.resolve(args.version)
    record = datasets.record(version)
    text = f"dataset {version} (parent {record['parent']}, " \
           f"exports {', '.join(record['exports'])})" \
           + "".join(f"\n  {k:13} {v}" for k, v in record["counts"].items())
    _emit(args, record, text)
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor.devtools.demo import run_demo

    summary = run_demo(settings, args.profile, Path(args.export) if args.export else None)
    text = [f"export          {summary['export_id']}",
            f"dataset version {summary['dataset_version']}",
            f"counts          {summary['counts']}",
            f"split           {summary.get('split')}",
            f"champion        {summary.get('champion') or 'none'}",
            f"last decision   {summary.get('last_decision')}",
            f"gate floors     {summary.get('gate_floors')} (demo profile)",
            f"S3              {summary['s3_endpoint']} bucket {summary['bucket']}",
            f"Airflow home    {summary['airflow_home']} (log {summary['airflow_log']})",
            "look closer:    brain-tumor datasets | exports | models | registry list; "
            "README 'Watching it in the Airflow UI'"]
    scoring = summary.get("scoring")
    if scoring:
        text.append(f"scored with     {scoring['model_version']}:")
        for sid, found in scoring["studies"].items():
            if "summary" in found:
                s = found["summary"]
                text.append(f"  {sid:28} tumor {'yes' if s['tumor_present'] else 'no ':3} "
                            f"({s['tumor_slices']}/{s['slices']} slices)  {found['overview']}")
            else:
                q = found["quarantined"] or {}
                text.append(f"  {sid:28} QUARANTINED {q.get('reason')}: {q.get('detail')}")
    else:
        text.append("scored with     nothing: no champion yet, so no studies were scored")
    _emit(args, summary, "\n".join(text))
    return 0


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    data = settings.public_dict()  # secrets masked
    fields = Settings.model_fields
    width = max(len(k) for k in data)
    lines = []
    for k, v in data.items():
        about = fields[k].description
        line = f"BRAIN_TUMOR_{k.upper():{width}} {v!s:24}"
        lines.append(f"{line}  # {about}" if about else line.rstrip())
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from brain_tumor.store.schemas import describe_markdown

    print(describe_markdown())
    return 0


# --- parser ---
class _ShowVersion(argparse.Action):
    """``--version``: print the package version and the code version, then exit."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from brain_tumor.store.datasets import code_version

        code = code_version()
        print(f"brain-tumor {code.split('+', 1)[0]} (code version {code})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every subcommand explains itself with --help)."""
    parser = argparse.ArgumentParser(
        prog="brain-tumor", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Brain-MRI tumor detection pipeline: ingest TCIA exports into versioned "
                    "datasets, split them by patient, train, evaluate and gate model versions, "
                    "keep the model registry, score incoming studies with the champion, and "
                    "run the whole job as a local demo.")
    parser.add_argument("--config", help="TOML settings file (else BRAIN_TUMOR_CONFIG)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--version", action=_ShowVersion, nargs=0,
                        help="print the package version and the code version (the package "
                             "version and a hash of the training sources), then exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        return p

    p = add("storage", cmd_storage, "Start, stop or show the embedded S3 server (SeaweedFS on "
                                    "127.0.0.1; data kept under BRAIN_TUMOR_HOME/s3).")
    p.add_argument("action", choices=["up", "down", "status"])

    p = add("synth", cmd_synth, "Write a synthetic TCIA export (real TIFFs, kaggle_3m layout), "
                                "deterministic by seed, optionally with bad files.")
    p.add_argument("out", help="folder to write the patient folders into")
    p.add_argument("--patients", type=int, default=6)
    p.add_argument("--slices", type=int, default=8, help="slices per patient")
    p.add_argument("--size", type=int, default=64, help="slice height and width in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tumor-free", type=int, default=1, help="patients with no tumor at all")
    p.add_argument("--first-patient", type=int, default=0, help="number of the first patient")
    p.add_argument("--studies", action="store_true",
                   help="write incoming studies (one per patient, no masks) instead of an export")
    p.add_argument("--bad", action="append", default=[], metavar="KIND",
                   help="inject a bad file: corrupt, truncated, missing_mask, orphan_mask, "
                        "shape_mismatch, nonbinary_mask, uint16, channels, bad_name, wrong_size")
    p.add_argument("--archive", help="also pack the export into this .zip/.tar/.tar.gz/.tar.xz")

    p = add("upload", cmd_upload, "Upload a local export folder or archive to exports/ in S3; a "
                                  "folder's manifest is written last, and uploading the same "
                                  "folder again resumes an interrupted upload.")
    p.add_argument("path")
    p.add_argument("--export-id", help="default: the folder or archive name")

    p = add("submit", cmd_submit, "Upload studies to incoming/<study_id>/ for the scoring DAG, "
                                  "each study's manifest last: a folder of a patient's slice "
                                  "TIFFs (masks are left out), or a DICOM study (a folder or "
                                  "zip of one study's instances, stored as <SOP Instance "
                                  "UID>.dcm; files that are not DICOM are left out); submitting "
                                  "again resumes an interrupted upload.")
    p.add_argument("folders", nargs="+", metavar="PATH")
    p.add_argument("--study-id", help="default: the folder name of a TIFF study, dcm-<hash of "
                                      "the Study Instance UID> of a DICOM study (only with one "
                                      "path)")

    p = add("studies", cmd_studies, "List the studies under incoming/ (complete or not); `seal "
                                    "ID` completes a study folder copied by another tool.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    _add_seal(actions, "study", "incoming/<id>/_manifest.json", "scoring", "STUDY_ID")

    p = add("batches", cmd_batches, "Show the newest scoring batches (scores/batches/): studies "
                                    "scored, skipped, quarantined, failed, deferred, tumors.")
    p.add_argument("--limit", type=int, default=20)

    p = add("exports", cmd_exports,
            "List the exports in S3 with their status (new, ingested, duplicate: added nothing, "
            "rejected: not taken in, with the reason) and the dataset version each went into; "
            "`reject ID --reason R` keeps an export out of every ingest, `retry ID` makes a "
            "rejected export new again.")
    p.add_argument("--new", action="store_true",
                   help="only exports not taken in yet: new ones and rejected ones")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    help_ = ("Record an export as rejected: no ingest (`ingest --new`, the nightly run) takes "
             "it in until it is retried. Refused for an export already taken in.")
    q = actions.add_parser("reject", help=help_, description=help_)
    q.add_argument("export_id", metavar="EXPORT_ID")
    q.add_argument("--reason", required=True, help="why (kept in the ledger, shown by exports)")
    help_ = ("Make a rejected export new again (after an operator's rejection, or once changed "
             "settings such as max_quarantine_fraction would take it): the next `ingest --new` "
             "or nightly run tries it again, and rejects it again if it is still bad.")
    q = actions.add_parser("retry", help=help_, description=help_)
    q.add_argument("export_id", metavar="EXPORT_ID")
    _add_seal(actions, "export", "exports/<id>/_manifest.json", "ingest", "EXPORT_ID"
              ).set_defaults(fn=cmd_exports_seal)

    p = add("ingest", cmd_ingest, "Ingest exports into a new dataset version: check every file, "
                                  "relabel from masks, quarantine bad files, merge, commit.")
    p.add_argument("export_ids", nargs="*", metavar="EXPORT_ID")
    p.add_argument("--new", action="store_true", help="ingest every export not in the ledger")

    p = add("split", cmd_split, "Split a dataset version by patient into train/val/test "
                                "(stable: earlier patients keep their split).")
    p.add_argument("--dataset-version", help="default: HEAD")

    p = add("train", cmd_train, "Train the classifier and the segmenter on a dataset version's "
                                "train patients and publish a model version to S3.")
    p.add_argument("--dataset-version", help="default: HEAD (must be split)")

    p = add("evaluate", cmd_evaluate, "Evaluate a model version on the test patients of a "
                                      "dataset version: metrics.json, plots, model card.")
    p.add_argument("model_version")
    p.add_argument("--dataset-version", help="default: the one the model was trained on")

    add("models", cmd_models, "List the published model versions.")

    p = add("score", cmd_score, "Score studies under incoming/<study_id>/ with the champion (or "
                                "--model-version): per-slice probability, label, mask, box; "
                                "masks, overlays and a summary under scores/; bad studies are "
                                "quarantined, finished ones skipped.")
    p.add_argument("study_ids", nargs="*", metavar="STUDY_ID", help="default: every study")
    p.add_argument("--model-version", help="default: the champion")

    p = add("registry", cmd_registry, "The model registry: list decisions, show a model, "
                                      "promote one by hand, or roll back to the previous "
                                      "champion (each writes an immutable event); repair "
                                      "moves a champion pointer left behind by a crash to "
                                      "the champion the event log implies.")
    p.add_argument("action", choices=["list", "show", "promote", "rollback", "repair"])
    p.add_argument("model_version", nargs="?", help="for show and promote")
    p.add_argument("--reason", help="why (recorded in the event)")

    p = add("datasets", cmd_datasets, "Show a dataset version (default: HEAD) and its counts.")
    p.add_argument("version", nargs="?")

    p = add("demo", cmd_demo, "The main job on the embedded default: start the S3 server, "
                              "upload an export (synthetic unless --export), run the "
                              "retrain_nightly DAG once on a local Airflow (SQLite).")
    p.add_argument("--profile", choices=["tiny", "small"], default="small",
                   help="size of the synthetic export (tiny is what the tests run)")
    p.add_argument("--export", help="a local export folder or archive to use instead, e.g. the "
                                    "real LGG archive")

    add("settings", cmd_settings, "Show every setting, its current value and what it does.")
    add("schemas", cmd_schemas, "Print the schemas of every object the pipeline writes (Markdown).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `brain-tumor` command."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if not args.json else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config)
        return int(args.fn(args, settings) or 0)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.verbose:
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
