"""The main job on the embedded default: S3 server up, an export in, retraining, then scoring.

``brain-tumor demo`` starts the embedded SeaweedFS server, uploads an export (a synthetic one
made here, or a folder/archive given with ``--export``), prepares a local Airflow on SQLite and
runs the ``retrain_nightly`` DAG once with ``airflow dags test``; then, once there is a champion,
drops a few synthetic studies (one with a corrupt slice) into ``incoming/``, runs the
``batch_score`` DAG once and copies each study's summary and pictures to
``<home>/results/<model>/<study>/``. Airflow runs as a subprocess:
this module only sets its environment. Re-running is safe: an export already uploaded is not
uploaded again, and the DAG then finds nothing new and ends early.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
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
    return Path(__file__).resolve().parents[1] / "dags"


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


def _airflow(args: list[str], env: dict[str, str], log_file: Path) -> None:
    exe = shutil.which("airflow", path=env["PATH"])
    if exe is None:
        raise DemoError("the `airflow` command is missing: install the project with its "
                        "airflow extra (pip install -e '.[airflow]')")
    with log_file.open("a") as fh:
        fh.write(f"\n$ airflow {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.run([exe, *args], env=env, stdout=fh, stderr=subprocess.STDOUT,
                              check=False)
    if proc.returncode != 0:
        raise DemoError(f"`airflow {' '.join(args)}` failed (exit {proc.returncode}); "
                        f"see {log_file}")


def _is_embedded(settings: Settings) -> bool:
    url = settings.s3_endpoint_url or ""
    return url.rstrip("/") in (f"http://127.0.0.1:{settings.embedded_s3_port}",
                               f"http://localhost:{settings.embedded_s3_port}")


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
    if _is_embedded(settings):
        embedded_s3.from_settings(settings).start()
    export_id = prepare_export(settings, paths, profile, export)
    dags = dags_folder or default_dags_folder()
    if not (dags / "retrain_nightly.py").exists():
        raise DemoError(f"no retrain_nightly.py in the DAGs folder {dags}")
    paths.airflow_home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(settings, paths.airflow_home, dags)
    log_file = paths.home / "demo-airflow.log"
    print(f"running the retrain_nightly DAG (Airflow log: {log_file}) ...", flush=True)
    _airflow(["db", "migrate"], env, log_file)
    _airflow(["pools", "set", settings.train_pool, "1", "GPUs (or CPU slots) for training"], env,
             log_file)
    _airflow(["dags", "test", "retrain_nightly"], env, log_file)
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
        _airflow(["dags", "test", "batch_score"], env, log_file)
        summary["scoring"] = {"model_version": summary["champion"],
                              "studies": fetch_results(settings, paths, summary["champion"],
                                                       study_ids)}
    log.info("demo summary: %s", json.dumps(summary, default=str))
    return summary
