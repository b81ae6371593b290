"""The main job on the embedded default: S3 server up, an export in, retraining, then scoring.

``brain-tumor demo`` starts the embedded SeaweedFS server, uploads an export (a synthetic one
made here, or a folder/archive given with ``--export``), prepares a local Airflow on SQLite and
runs the ``retrain_nightly`` DAG once with ``airflow dags test``; then, once there is a champion,
drops a few synthetic studies (one with a corrupt slice) into ``incoming/``, runs the
``batch_score`` DAG once and copies each study's summary and pictures to
``<home>/results/<model>/<study>/``. Airflow runs as a subprocess:
this module only sets its environment. Re-running is safe: an export already uploaded is not
uploaded again, and the DAG then finds nothing new and ends early.

While a DAG runs, its output is read line by line: every line goes to ``<home>/demo-airflow.log``
and ``DagTestProgress`` turns the lines that matter into progress on the terminal: each task as
it starts and ends (with its state and duration), each finished training epoch, and the run's end.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from brain_tumor import steps
from brain_tumor.devtools import embedded_s3
from brain_tumor.devtools.synth import SynthSpec, make_export, make_studies
from brain_tumor.ingest.exports import list_exports, split_archive_name, upload_export
from brain_tumor.settings import Settings, settings_to_env
from brain_tumor.store.datasets import DatasetNotFound, DatasetStore

log = logging.getLogger(__name__)

#: synthetic export sizes; "tiny" is what the test suite runs
PROFILES: dict[str, SynthSpec] = {
    "tiny": SynthSpec(patients=12, slices=6, size=32, seed=1, bad=("corrupt",)),
    "small": SynthSpec(patients=16, slices=12, size=64, seed=0, bad=("corrupt", "nonbinary_mask")),
}


#: synthetic incoming studies scored at the end of the demo (one has a corrupt slice)
STUDY_PROFILES: dict[str, SynthSpec] = {
    "tiny": SynthSpec(patients=3, slices=5, size=32, seed=101, first_patient=900,
                      tumor_free_patients=1, bad=("corrupt",), patient_prefix="STUDY"),
    "small": SynthSpec(patients=4, slices=10, size=64, seed=102, first_patient=900,
                       tumor_free_patients=1, bad=("corrupt",), patient_prefix="STUDY"),
}


#: training and gate settings of each profile (a BRAIN_TUMOR_* variable still wins); the gate
#: floors are relaxed for these small synthetic sets and say so in the summary
PROFILE_SETTINGS: dict[str, dict] = {
    "tiny": {"backbone": "tiny", "image_size": 32, "batch_size": 8, "epochs": 12,
             "seg_epochs": 12, "seg_depth": 2, "seg_base_filters": 8, "learning_rate": 3e-3,
             "seg_learning_rate": 3e-3, "warmup_epochs": 0, "bootstrap_samples": 200,
             "gate_min_sensitivity": 0.2, "gate_min_roc_auc": 0.7, "gate_min_dice": 0.05},
    "small": {"backbone": "resnet50", "image_size": 64, "batch_size": 16, "epochs": 10,
              "seg_epochs": 12, "seg_depth": 3, "seg_base_filters": 16, "warmup_epochs": 1,
              "bootstrap_samples": 500, "gate_min_sensitivity": 0.5, "gate_min_roc_auc": 0.7,
              "gate_min_dice": 0.2},
}


def profile_settings(settings: Settings, profile: str) -> Settings:
    """The settings with the profile's values for every field the environment does not set."""
    update = {k: v for k, v in PROFILE_SETTINGS[profile].items()
              if f"BRAIN_TUMOR_{k.upper()}" not in os.environ}
    return settings.model_copy(update=update)


class DemoError(RuntimeError):
    """The main job failed; the message says which step and where its log is."""


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo keeps its local state."""

    home: Path

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def exports(self) -> Path:
        return self.home / "exports"

    @property
    def studies(self) -> Path:
        return self.home / "studies"

    @property
    def results(self) -> Path:
        return self.home / "results"


def default_dags_folder() -> Path:
    """The repository's dags/ folder (beside the package in a source checkout)."""
    return Path(__file__).resolve().parents[2] / "dags"


def airflow_env(settings: Settings, airflow_home: Path, dags_folder: Path) -> dict[str, str]:
    """Environment for a local Airflow on SQLite that runs this project's DAGs."""
    env = dict(os.environ)
    env.update(settings_to_env(settings))
    bin_dir = str(Path(sys.executable).parent)
    env.update({
        "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(dags_folder.parent / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home}/airflow.db",
    })
    return env


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:?\d\d)?\s")
_TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(?P<task>\S+) map_index=(?P<map>-?\d+)")
_TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(?P<task>\S+) map_index=(?P<map>-?\d+)")
_TASK_STATE = re.compile(r"Task instance state updated\b.*\bnew_state=(?P<state>\w+)")
_EPOCH = re.compile(r"\b(?P<phase>classifier_finetune|classifier|segmenter) epoch "
                    r"(?P<n>\d+)/(?P<total>\d+|\?)(?::\s*(?P<metrics>[^\[]*?))?\s*(?:\[|$)")
_KERAS_EPOCH = re.compile(r"(?:^|\]\s|\s)Epoch (?P<n>\d+)/(?P<total>\d+)\s*(?:\[|$)")
_RUN_END = re.compile(r"DagRun Finished: dag_id=(?P<dag>[^,\s]+),.*?\brun_duration=(?P<secs>[\d.]+)"
                      r",.*?\bstate=(?P<state>\w+)")


def format_duration(seconds: float) -> str:
    """A duration for people: '4.2s', '3m07s', '1h02m'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _stamp(line: str) -> float | None:
    """The line's leading ISO 8601 time (Airflow's log format) in seconds, or None."""
    match = _STAMP.match(line)
    if match is None:
        return None
    zone = match.group(2) or "+00:00"
    try:
        return datetime.fromisoformat(match.group(1) + ("+00:00" if zone == "Z" else zone)) \
            .timestamp()
    except ValueError:
        return None


@dataclass
class DagTestProgress:
    """Turns ``airflow dags test`` output, line by line, into progress lines for people.

    Reads Airflow's ``[DAG TEST] starting``/``end task`` lines, the task's final state, the
    ``DagRun Finished`` line, and the training's epoch lines (``<phase> epoch n/N: ...`` logged
    by the train step, or Keras' ``Epoch n/N``). Durations come from the lines' own time stamps,
    or from ``now`` for lines without one.
    """

    started: dict[str, float] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    current: str | None = None

    def feed(self, line: str, now: float) -> list[str]:
        """The progress lines (possibly none) that one output line gives."""
        line = _ANSI.sub("", line.rstrip("\n"))
        at = _stamp(line) or now
        if match := _TASK_START.search(line):
            name = _task_name(match)
            self.started[name], self.current = at, name
            self.states.pop(name, None)
            return [f"  task {name} started"]
        if match := _TASK_END.search(line):
            name = _task_name(match)
            began = self.started.pop(name, None)
            state = self.states.pop(name, "ended")
            self.current = None
            took = f" in {format_duration(max(at - began, 0.0))}" if began is not None else ""
            return [f"  task {name} finished: {state}{took}"]
        if (match := _TASK_STATE.search(line)) and self.current is not None:
            self.states[self.current] = match.group("state")
            return []
        if match := _EPOCH.search(line):
            metrics = (match.group("metrics") or "").strip()
            return [f"    {match.group('phase')} epoch {match.group('n')}/{match.group('total')}"
                    + (f": {metrics}" if metrics else "")]
        if match := _KERAS_EPOCH.search(line):
            return [f"    epoch {match.group('n')}/{match.group('total')}"]
        if match := _RUN_END.search(line):
            took = format_duration(float(match.group("secs")))
            return [f"  DAG {match.group('dag')} finished: {match.group('state')} in {took}"]
        return []


def _task_name(match: re.Match) -> str:
    index = int(match.group("map"))
    return match.group("task") if index < 0 else f"{match.group('task')}[{index}]"


def _airflow(args: list[str], env: dict[str, str], log_file: Path,
             progress: DagTestProgress | None = None) -> None:
    """Run an airflow command; its whole output goes to log_file, progress lines to stdout."""
    exe = shutil.which("airflow", path=env["PATH"])
    if exe is None:
        raise DemoError("the `airflow` command is missing: install the project with its "
                        "airflow extra (pip install -e '.[airflow]')")
    with log_file.open("a") as fh:
        fh.write(f"\n$ airflow {' '.join(args)}\n")
        fh.flush()
        with subprocess.Popen([exe, *args], env={**env, "PYTHONUNBUFFERED": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace", bufsize=1) as proc:
            for line in proc.stdout or ():
                fh.write(line)
                fh.flush()
                for shown in progress.feed(line, time.time()) if progress else ():
                    print(shown, flush=True)
    if proc.returncode != 0:
        raise DemoError(f"`airflow {' '.join(args)}` failed (exit {proc.returncode}); "
                        f"see {log_file}")


def prepare_export(settings: Settings, paths: DemoPaths, profile: str,
                   export: Path | None) -> str:
    """Upload the given export, or a synthetic one of the profile; skip if already there."""
    store = steps.open_store(settings)
    if export is not None:
        export = Path(export)
        parsed = split_archive_name(export.name)
        export_id = parsed[0] if parsed and export.is_file() else export.name
    else:
        spec = PROFILES[profile]
        export_id = f"synthetic-{profile}-s{spec.seed}"
        export = paths.exports / export_id
        if not export.exists():
            make_export(export, spec)
    if export_id in list_exports(store, settings):
        log.info("export %s is in storage already", export_id)
    else:
        upload_export(store, settings, export, export_id, progress=True)
    return export_id


def prepare_studies(settings: Settings, paths: DemoPaths, profile: str) -> list[str]:
    """Upload the profile's synthetic studies to incoming/ (those not there yet)."""
    from brain_tumor.scoring.readers import upload_study
    from brain_tumor.store.incoming import IncomingStore

    incoming = IncomingStore(steps.open_store(settings), settings)
    root = paths.studies / profile
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []
    if not folders:
        folders = make_studies(root, STUDY_PROFILES[profile])
    present = set(incoming.study_ids())
    for folder in folders:
        if folder.name not in present:
            upload_study(incoming, folder, io_workers=settings.io_workers)
    return [f.name for f in folders]


def fetch_results(settings: Settings, paths: DemoPaths, model_version: str,
                  study_ids: list[str]) -> dict[str, dict]:
    """Copy each scored study's summary and pictures to <home>/results/<model>/<study>/."""
    from brain_tumor.store.scores import ScoreStore

    scores = ScoreStore(steps.open_store(settings), settings)
    found: dict[str, dict] = {}
    for sid in study_ids:
        summary = scores.result(model_version, sid)
        if summary is None:
            found[sid] = {"quarantined": scores.quarantine_record(model_version, sid)}
            continue
        folder = paths.results / model_version / sid
        for name in scores.output_names(model_version, sid):
            if name.endswith((".png", ".json")):
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(scores.get_output(model_version, sid, name))
        found[sid] = {"summary": summary, "folder": str(folder),
                      "overview": str(folder / "overview.png"),
                      "s3_prefix": scores.output_key(model_version, sid, "")}
    return found


def run_demo(settings: Settings, profile: str = "small", export: Path | None = None,
             dags_folder: Path | None = None) -> dict:
    """Run the main job end to end; returns what it made (and where to look)."""
    if profile not in PROFILES:
        raise DemoError(f"profile must be one of {sorted(PROFILES)}, received {profile!r}")
    settings = profile_settings(settings, profile)
    paths = DemoPaths(settings.home_dir)
    paths.home.mkdir(parents=True, exist_ok=True)
    if settings.s3_is_embedded:
        embedded_s3.from_settings(settings).start()
    export_id = prepare_export(settings, paths, profile, export)
    dags = dags_folder or default_dags_folder()
    if not (dags / "retrain_nightly.py").exists():
        raise DemoError(f"no retrain_nightly.py in the DAGs folder {dags}")
    paths.airflow_home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(settings, paths.airflow_home, dags)
    log_file = paths.home / "demo-airflow.log"
    print(f"running the retrain_nightly DAG (full Airflow log: {log_file}) ...", flush=True)
    _airflow(["db", "migrate"], env, log_file)
    _airflow(["pools", "set", settings.train_pool, "1", "GPUs (or CPU slots) for training"], env,
             log_file)
    _airflow(["dags", "test", "retrain_nightly"], env, log_file, DagTestProgress())
    datasets = DatasetStore(steps.open_store(settings), settings)
    head = datasets.head().version
    summary = {"export_id": export_id, "dataset_version": head,
               "counts": datasets.record(head)["counts"] if head else None,
               "airflow_home": str(paths.airflow_home), "airflow_log": str(log_file),
               "s3_endpoint": settings.s3_endpoint_url, "bucket": settings.s3_bucket}
    if head:
        try:
            split = datasets.split(head)
            summary["split"] = split.groupby("split")["patient_id"].count().to_dict()
        except DatasetNotFound:
            summary["split"] = None
    from brain_tumor.store.registry import Registry

    registry = Registry(steps.open_store(settings), settings)
    events = registry.events()
    summary["champion"] = registry.champion()
    summary["last_decision"] = ({k: events[-1][k] for k in ("action", "model_version", "reason")}
                                if events else None)
    summary["gate_floors"] = {k: getattr(settings, k) for k in (
        "gate_min_sensitivity", "gate_min_roc_auc", "gate_min_dice")}
    summary["scoring"] = None
    if summary["champion"]:
        study_ids = prepare_studies(settings, paths, profile)
        print(f"running the batch_score DAG on {len(study_ids)} studies ...", flush=True)
        _airflow(["dags", "test", "batch_score"], env, log_file, DagTestProgress())
        summary["scoring"] = {"model_version": summary["champion"],
                              "studies": fetch_results(settings, paths, summary["champion"],
                                                       study_ids)}
    log.info("demo summary: %s", json.dumps(summary, default=str))
    return summary
