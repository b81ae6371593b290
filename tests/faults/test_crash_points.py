"""A process killed, or cut off from S3, at any write leaves nothing half-visible; a re-run
completes with the result of an uninterrupted run.

Each operation runs in a child process (``python -c CHILD ...``: the CLI's ``main``, or a few
lines of Python) against the session's S3 server. The child counts its successful S3 writes
(``ObjectStore.put``, which ``put_new``, ``put_json``, ``put_parquet`` and ``upload_file`` of
small files go through, and ``copy``) and, after the N-th, either ends with ``os._exit(137)``
(killed) or points its client at a closed port (S3 unreachable). An uninterrupted child run
first counts the writes; a kill then comes after every write from 1 to that count, or after 8
evenly spaced ones (first and last included) where there are more; the loss of S3 after the
first, a middle and the last write.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from support import copy_model, free_port

from brain_tumor import steps
from brain_tumor.devtools.synth import SynthSpec, make_export, make_studies
from brain_tumor.ingest.exports import list_exports, upload_export
from brain_tumor.ingest.run import ingest_export
from brain_tumor.scoring.readers import upload_study
from brain_tumor.settings import Settings, settings_to_env
from brain_tumor.store.datasets import DatasetStore
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.registry import Registry
from brain_tumor.store.schemas import validate_record
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

#: runs in the child: counts successful writes, then kills itself or loses S3 after the N-th
CHILD = r"""
import os, sys, threading
import boto3
from botocore.config import Config
from brain_tumor.store import storage

AFTER, MODE, LOG = int(os.environ["FAULT_AFTER"]), os.environ["FAULT_MODE"], os.environ["FAULT_LOG"]
DEAD = os.environ["FAULT_DEAD_ENDPOINT"]
lock, state = threading.Lock(), {"n": 0, "cut": False}

def cut(store):
    store.endpoint = DEAD
    store.client = boto3.client("s3", endpoint_url=DEAD, region_name="us-east-1",
                                aws_access_key_id="x", aws_secret_access_key="x",
                                config=Config(retries={"max_attempts": 1}, connect_timeout=2))

def counted(real, key_at):
    def write(self, *args, **kwargs):
        if state["cut"]:
            cut(self)
        result = real(self, *args, **kwargs)
        with lock:
            state["n"] += 1
            with open(LOG, "a") as f:
                f.write(str(args[key_at]) + "\n")
            if state["n"] == AFTER:
                if MODE == "kill":
                    os._exit(137)
                state["cut"] = True
        return result
    return write

storage.ObjectStore.put = counted(storage.ObjectStore.put, 0)
storage.ObjectStore.copy = counted(storage.ObjectStore.copy, 1)
if sys.argv[1] == "--py":
    exec(sys.argv[2])
else:
    from brain_tumor.cli import main
    sys.exit(main(sys.argv[1:]))
"""

#: the most N tried per operation: killed, S3 unreachable
POINTS = {"kill": 8, "unreachable": 3}

MODEL_RECORD = {
    "dataset_version": "ds-000000000000", "image_size": 32, "threshold": 0.5,
    "threshold_rule": "youden", "backbone": "tiny", "keras_backend": "tensorflow",
    "best_epochs": {"classifier": 1, "segmenter": 1}, "created_at": "2024-01-01T00:00:00+00:00",
    "code_version": "test"}


def points(total: int, most: int) -> list[int]:
    """Every N from 1 to total, or `most` evenly spaced ones including 1 and total."""
    if total <= most:
        return list(range(1, total + 1))
    return sorted({round(1 + i * (total - 1) / (most - 1)) for i in range(most)})


def run_child(settings: Settings, tmp: Path, args: list[str], after: int = 0,
              mode: str = "kill") -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run CHILD with args; returns the process and the keys it wrote."""
    log = tmp / f"writes-{mode}-{after}-{os.urandom(4).hex()}.txt"
    env = {**os.environ, **settings_to_env(settings), "FAULT_AFTER": str(after),
           "FAULT_MODE": mode, "FAULT_LOG": str(log),
           "FAULT_DEAD_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True,
                          text=True, timeout=120)
    return proc, log.read_text().splitlines() if log.exists() else []


def keys(store: ObjectStore) -> list[str]:
    return [o.key for o in store.list("")]


def check_fault(proc: subprocess.CompletedProcess, mode: str, settings: Settings, n: int,
                last: bool = False) -> None:
    """A killed child ends with 137; a child cut off from S3 exits 1 naming the endpoint (or 0
    when cut off after its last write and it reads nothing more)."""
    if mode == "unreachable" and last and proc.returncode == 0:
        return
    if mode == "kill":
        assert proc.returncode == 137, (n, proc.returncode, proc.stderr[-2000:])
    else:
        assert proc.returncode == 1, (n, proc.returncode, proc.stderr[-2000:])
        assert "cannot reach S3 at http://127.0.0.1:" in proc.stderr, (n, proc.stderr[-2000:])
        assert settings.s3_bucket in proc.stderr, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-patient, 3-slice export."""
    root = tmp_path_factory.mktemp("export") / "e1"
    make_export(root, SynthSpec(patients=2, slices=3, size=32, tumor_free_patients=0))
    return root


def _fresh(make_settings: Callable[..., Settings]) -> tuple[Settings, ObjectStore]:
    settings = make_settings()
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    return settings, store


@pytest.mark.parametrize("mode", ["kill", "unreachable"])
def test_upload_interrupted_at_each_write(mode: str, make_settings, export_dir: Path,
                                          tmp_path: Path) -> None:
    """No export is listed until its manifest is written; a second upload completes it."""
    ref_settings, ref_store = _fresh(make_settings)
    args = ["upload", str(export_dir), "--export-id", "e1"]
    proc, written = run_child(ref_settings, tmp_path, args)
    assert proc.returncode == 0, proc.stderr
    assert written[-1].endswith("e1/_manifest.json")
    expected = keys(ref_store)
    for n in points(len(written), POINTS[mode]):
        settings, store = _fresh(make_settings)
        proc, _ = run_child(settings, tmp_path, args, n, mode)
        check_fault(proc, mode, settings, n, last=n == len(written))
        listed = list_exports(store, settings)
        assert listed == (["e1"] if n == len(written) else []), (n, listed)
        upload_export(store, settings, export_dir, "e1")
        assert list_exports(store, settings) == ["e1"]
        assert keys(store) == expected, n
        manifest = store.get_json(settings.key("exports", "e1", "_manifest.json"))
        reference = ref_store.get_json(ref_settings.key("exports", "e1", "_manifest.json"))
        assert manifest["files"] == reference["files"], n


@pytest.mark.parametrize("mode", ["kill", "unreachable"])
def test_submit_interrupted_at_each_write(mode: str, make_settings, tmp_path: Path) -> None:
    """No study is planned until its manifest is written; a second submit completes it."""
    folder = make_studies(tmp_path / "s", SynthSpec(patients=1, slices=3, size=32, seed=2))[0]
    args = ["submit", str(folder), "--study-id", "s1"]
    ref_settings, ref_store = _fresh(make_settings)
    proc, written = run_child(ref_settings, tmp_path, args)
    assert proc.returncode == 0, proc.stderr
    assert written[-1].endswith("s1/_manifest.json"), written
    expected = keys(ref_store)
    for n in points(len(written), POINTS[mode]):
        settings, store = _fresh(make_settings)
        proc, _ = run_child(settings, tmp_path, args, n, mode)
        check_fault(proc, mode, settings, n, last=n == len(written))
        incoming = IncomingStore(store, settings)
        assert incoming.study_ids() == (["s1"] if n == len(written) else []), n
        assert upload_study(incoming, folder, "s1")[0] == "s1"
        assert incoming.study_ids() == ["s1"]
        assert keys(store) == expected, n


def _visible_versions(datasets: DatasetStore) -> set[str]:
    """The dataset versions readers reach: HEAD's and those the ledger names."""
    head = datasets.head().version
    named = {e["dataset_version"] for e in datasets.entries().values() if e["dataset_version"]}
    return named | ({head} if head else set())


@pytest.mark.parametrize("mode", ["kill", "unreachable"])
def test_ingest_interrupted_at_each_write(mode: str, make_settings, export_dir: Path,
                                          tmp_path: Path) -> None:
    """HEAD and the ledger name only committed versions; a re-run gives the same version."""
    ref_settings, ref_store = _fresh(make_settings)
    upload_export(ref_store, ref_settings, export_dir, "e1")
    proc, written = run_child(ref_settings, tmp_path, ["ingest", "e1"])
    assert proc.returncode == 0, proc.stderr
    ref = DatasetStore(ref_store, ref_settings)
    version = ref.head().version
    assert version and written[-1].endswith("ledger/exports/e1.json"), written
    expected = keys(ref_store)
    for n in points(len(written), POINTS[mode]):
        settings, store = _fresh(make_settings)
        upload_export(store, settings, export_dir, "e1")
        proc, _ = run_child(settings, tmp_path, ["ingest", "e1"], n, mode)
        check_fault(proc, mode, settings, n, last=n == len(written))
        datasets = DatasetStore(store, settings)
        assert datasets.head().version in (None, version), n
        for visible in _visible_versions(datasets):
            assert datasets.exists(visible), (n, visible)
            assert len(datasets.manifest(visible)) == len(ref.manifest(version))
        result = ingest_export(store, settings, "e1")
        assert result.dataset_version == version, n
        assert datasets.head().version == version
        assert datasets.entry("e1")["status"] == "ingested"
        assert keys(store) == expected, n
        assert datasets.manifest(version).equals(ref.manifest(version)), n
        assert datasets.record(version)["exports"] == ["e1"]


@pytest.mark.parametrize("mode", ["kill", "unreachable"])
def test_model_publish_interrupted_at_each_write(mode: str, make_settings,
                                                 tmp_path: Path) -> None:
    """A model version is listed only with its model.json; publishing again completes it."""
    local = tmp_path / "model"
    local.mkdir()
    for i, name in enumerate(("classifier.keras", "segmenter.keras", "history.json")):
        (local / name).write_bytes(bytes([i]) * (1000 + i))
    record = {"model_version": "m-000000000001", **MODEL_RECORD}
    code = (f"from brain_tumor.settings import load_settings\n"
            f"from brain_tumor.store.modelstore import ModelStore\n"
            f"from brain_tumor.store.storage import ObjectStore\n"
            f"from pathlib import Path\n"
            f"s = load_settings()\n"
            f"ModelStore(ObjectStore.from_settings(s), s).publish('m-000000000001', "
            f"Path({str(local)!r}), {record!r})\n")
    ref_settings, ref_store = _fresh(make_settings)
    proc, written = run_child(ref_settings, tmp_path, ["--py", code])
    assert proc.returncode == 0, proc.stderr
    assert written[-1].endswith("m-000000000001/model.json"), written
    expected = keys(ref_store)
    for n in points(len(written), POINTS[mode]):
        settings, store = _fresh(make_settings)
        proc, _ = run_child(settings, tmp_path, ["--py", code], n, mode)
        models = ModelStore(store, settings)
        check_fault(proc, mode, settings, n, last=n == len(written))
        assert models.versions() == (["m-000000000001"] if n == len(written) else []), n
        assert models.publish("m-000000000001", local, record) == (n < len(written))
        assert models.versions() == ["m-000000000001"]
        assert keys(store) == expected, n


def _model(store: ObjectStore, settings: Settings, version: str) -> None:
    record = validate_record("model", {"model_version": version, **MODEL_RECORD})
    assert store.put_json(ModelStore(store, settings).key(version, "model.json"), record, new=True)


@pytest.mark.parametrize("mode", ["kill", "unreachable"])
def test_promotion_interrupted_at_each_write(mode: str, make_settings, tmp_path: Path) -> None:
    """The event log decides the champion; `registry repair` brings the pointer in line."""
    def prepared() -> tuple[Settings, ObjectStore, Registry]:
        settings, store = _fresh(make_settings)
        for version in ("m-a", "m-b"):
            _model(store, settings, version)
        registry = Registry(store, settings)
        registry.promote("m-a", reason="first")
        return settings, store, registry

    args = ["registry", "promote", "m-b", "--reason", "better"]
    ref_settings, _, _ = prepared()
    proc, written = run_child(ref_settings, tmp_path, args)
    assert proc.returncode == 0, proc.stderr
    assert len(written) == 2 and written[0].endswith("2.json"), written
    for n in points(len(written), POINTS[mode]):
        settings, store, _ = prepared()
        proc, _ = run_child(settings, tmp_path, args, n, mode)
        check_fault(proc, mode, settings, n, last=n == len(written))
        registry = Registry(store, settings)
        assert registry.champion() == "m-b", n
        pointer = store.get_json(registry.pointer_key)
        assert pointer["model_version"] == ("m-b" if n == len(written) else "m-a"), n
        repair = run_child(settings, tmp_path, ["registry", "repair"])[0]
        assert repair.returncode == 0, repair.stderr
        assert store.get_json(registry.pointer_key)["model_version"] == "m-b"
        assert [e["model_version"] for e in registry.events()] == ["m-a", "m-b"]


def test_scoring_killed_before_and_after_its_done_marker(trained, tmp_path: Path) -> None:
    """Killed just before the done marker, a study is not done and a re-run scores it with the
    same outputs; killed right after the marker, it is done and not scored again.

    Sampled at those two writes, not every write: each child loads the model.
    """
    model_settings, record = trained
    folder = make_studies(tmp_path / "s", SynthSpec(patients=1, slices=3, size=32, seed=2))[0]

    def prepared() -> tuple[Settings, ObjectStore, str]:
        settings = model_settings.model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}"})
        version = copy_model(model_settings, record["model_version"], settings)
        store = ObjectStore.from_settings(settings)
        upload_study(IncomingStore(store, settings), folder, "s1")
        return settings, store, version

    ref_settings, ref_store, version = prepared()
    args = ["score", "s1", "--model-version", version]
    proc, written = run_child(ref_settings, tmp_path, args)
    assert proc.returncode == 0, proc.stderr
    ref_scores = ScoreStore(ref_store, ref_settings)
    marker = written.index(ref_scores.done_key(version, "s1"))
    outputs = sorted(ref_scores.output_names(version, "s1"))
    for n in (marker, marker + 1):
        settings, store, version = prepared()
        proc, _ = run_child(settings, tmp_path, args, n)
        assert proc.returncode == 137, (n, proc.stderr[-2000:])
        scores = ScoreStore(store, settings)
        assert scores.is_done(version, "s1") == (n > marker), n
        assert (scores.result(version, "s1") is None) == (n <= marker), n
        scored = steps.score(settings, ["s1"], version)
        statuses = {r["study_id"]: r["status"] for r in scored["studies"]}
        assert (statuses.get("s1") == "scored") == (n <= marker), (n, statuses)
        assert scores.is_done(version, "s1")
        assert sorted(scores.output_names(version, "s1")) == outputs, n
        summary, reference = scores.result(version, "s1"), ref_scores.result(version, "s1")
        for field in ("tumor_present", "tumor_slices", "slices", "tumor_volume_voxels"):
            assert summary[field] == reference[field], (n, field)
