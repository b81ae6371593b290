"""Two real processes doing the same thing at once: one result, the other says what happened.

Each child runs the CLI's ``main`` against the session's S3 server. To make the race certain,
both wait at a barrier (a folder both write their pid into) just before their first S3 write,
so both have read the same state (ledger, HEAD, event log) before either writes. Each child
also notes the keys it reads and writes (``RACE_LOG/<pid>``: ``get KEY`` / ``put KEY``, writes
that succeeded only).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from support import copy_model

from brain_tumor.devtools.synth import SynthSpec, make_export, make_studies
from brain_tumor.ingest.exports import upload_export
from brain_tumor.ingest.run import lease_key
from brain_tumor.scoring.readers import upload_study
from brain_tumor.settings import Settings, settings_to_env
from brain_tumor.store.datasets import DatasetStore
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.registry import Registry
from brain_tumor.store.schemas import validate_record
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

#: runs in each child: waits for the other child before its first write, then runs the CLI
CHILD = r"""
import os, sys, time
from brain_tumor.store import storage

BARRIER, PARTIES = os.environ["RACE_BARRIER"], int(os.environ["RACE_PARTIES"])
LOG = os.environ["RACE_LOG"]
real_put, real_get = storage.ObjectStore.put, storage.ObjectStore.get_with_etag
state = {"waited": False}

def note(action, key):
    with open(os.path.join(LOG, str(os.getpid())), "a") as fh:
        fh.write(f"{action} {key}\n")

def put(self, key, *args, **kwargs):
    if not state["waited"]:
        state["waited"] = True
        open(os.path.join(BARRIER, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(BARRIER)) < PARTIES and time.monotonic() < deadline:
            time.sleep(0.01)
    etag = real_put(self, key, *args, **kwargs)
    note("put", key)
    return etag

def get_with_etag(self, key):
    found = real_get(self, key)
    note("get", key)
    return found

storage.ObjectStore.put = put
storage.ObjectStore.get_with_etag = get_with_etag
from brain_tumor.cli import main
sys.exit(main(sys.argv[1:]))
"""


def race(settings: Settings, barrier: Path,
         *commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Start one child per command at once; their results, in the order given."""
    barrier.mkdir()
    (barrier.parent / "race-log").mkdir()
    env = {**os.environ, **settings_to_env(settings), "RACE_BARRIER": str(barrier),
           "RACE_PARTIES": str(len(commands)), "RACE_LOG": str(barrier.parent / "race-log")}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, *c], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands]
    results = []
    for proc, command in zip(procs, commands, strict=True):
        out, err = proc.communicate(timeout=180)
        results.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
    return results


@pytest.fixture
def bucket(make_settings: Callable[..., Settings]) -> tuple[Settings, ObjectStore]:
    settings = make_settings()
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    return settings, store


def test_two_ingests_of_one_export(bucket, tmp_path: Path) -> None:
    """One ingest takes the export's lease and does the work; the other finds the lease before
    reading the export, names its holder and exits 1 having written nothing."""
    settings, store = bucket
    make_export(tmp_path / "e1", SynthSpec(patients=2, slices=3, size=32, tumor_free_patients=0))
    upload_export(store, settings, tmp_path / "e1", "e1")
    lease = lease_key(settings, "e1")
    results = race(settings, tmp_path / "barrier", ["ingest", "e1"], ["ingest", "e1"])
    codes = [r.returncode for r in results]
    assert sorted(codes) == [0, 1], [(r.returncode, r.stderr[-3000:]) for r in results]
    winner, loser = results[codes.index(0)], results[codes.index(1)]
    assert "is being ingested by another process" in loser.stderr, loser.stderr[-3000:]
    assert "this ingest stops and writes nothing" in loser.stderr
    holder = re.search(r"held by pid (\d+) on host '[^']+' since \S+, until (\S+) \(lease ",
                       loser.stderr)
    assert holder, loser.stderr[-3000:]
    logs = {p.name: p.read_text().splitlines() for p in (tmp_path / "race-log").iterdir()}
    assert holder.group(1) in logs and len(logs) == 2  # the message names the winner's pid
    (loser_log,) = [lines for pid, lines in logs.items() if pid != holder.group(1)]
    assert loser_log == [f"get {lease}"]  # it read the lease and nothing else, wrote nothing
    winner_log = logs[holder.group(1)]
    assert winner_log[0] == f"put {lease}" and any(
        line.startswith(f"get {settings.key('exports')}") for line in winner_log)
    datasets = DatasetStore(store, settings)
    version = datasets.head().version
    assert version is not None and datasets.exists(version) and version in winner.stdout
    assert datasets.record(version)["exports"] == ["e1"]
    assert list(datasets.entries()) == ["e1"]
    assert datasets.entry("e1")["status"] == "ingested"
    assert datasets.entry("e1")["dataset_version"] == version
    assert [o.key for o in store.list(settings.key("datasets"))
            if o.key.endswith("/dataset.json")] == [datasets.key(version, "dataset.json")]
    assert not store.exists(lease)  # released by the winner


def _model(store: ObjectStore, settings: Settings, version: str) -> None:
    record = validate_record("model", {
        "model_version": version, "dataset_version": "ds-000000000000", "image_size": 32,
        "threshold": 0.5, "threshold_rule": "youden", "backbone": "tiny",
        "keras_backend": "tensorflow", "best_epochs": {"classifier": 1, "segmenter": 1},
        "created_at": "2024-01-01T00:00:00+00:00", "code_version": "test"})
    assert store.put_json(ModelStore(store, settings).key(version, "model.json"), record, new=True)


def test_two_promotions_one_wins(bucket, tmp_path: Path) -> None:
    """Two candidates promoted at once: exactly one becomes champion, the other gets a
    conflict naming the winner, and the pointer agrees with the log."""
    settings, store = bucket
    for version in ("m-a", "m-b", "m-c"):
        _model(store, settings, version)
    Registry(store, settings).promote("m-a", reason="first")
    results = race(settings, tmp_path / "barrier",
                   ["registry", "promote", "m-b", "--reason", "b"],
                   ["registry", "promote", "m-c", "--reason", "c"])
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 1], [(r.returncode, r.stderr[-2000:]) for r in results]
    winner = ("m-b", "m-c")[[r.returncode for r in results].index(0)]
    loser = results[[r.returncode for r in results].index(1)]
    assert "was taken by another writer" in loser.stderr, loser.stderr
    assert f"promoted {winner}" in loser.stderr, loser.stderr
    registry = Registry(store, settings)
    assert registry.champion() == winner
    assert [e["model_version"] for e in registry.events()] == ["m-a", winner]
    assert store.get_json(registry.pointer_key)["model_version"] == winner


def test_two_scorings_of_one_study(trained, tmp_path: Path) -> None:
    """Both exit 0 with one done marker; the log of the later one says it found the marker."""
    model_settings, record = trained
    settings = model_settings.model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}"})
    version = copy_model(model_settings, record["model_version"], settings)
    store = ObjectStore.from_settings(settings)
    folder = make_studies(tmp_path / "s", SynthSpec(patients=1, slices=3, size=32, seed=2))[0]
    upload_study(IncomingStore(store, settings), folder, "s1")
    command = ["-v", "score", "s1", "--model-version", version]
    results = race(settings, tmp_path / "barrier", command, command)
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
        assert "s1" in r.stdout and "scored" in r.stdout, r.stdout
    scores = ScoreStore(store, settings)
    assert list(scores.done_ids(version)) == ["s1"]
    assert scores.result(version, "s1")["study_id"] == "s1"
    found = ["done marker already present" in r.stderr for r in results]
    assert sorted(found) == [False, True], [r.stderr[-2000:] for r in results]
