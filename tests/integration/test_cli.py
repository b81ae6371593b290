"""The command line: every command explains itself; failures exit non-zero with the reason."""

import json

import pytest

from brain_tumor.cli import build_parser, main
from brain_tumor.settings import settings_to_env

COMMANDS = ["storage", "synth", "upload", "submit", "batches", "exports", "ingest", "split",
            "train", "evaluate", "score", "models", "registry", "datasets", "demo", "settings",
            "schemas", "studies"]


def test_every_command_has_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in COMMANDS:
        assert name in text
        with pytest.raises(SystemExit):
            main([name, "--help"])
        sub = capsys.readouterr().out
        assert "usage: brain-tumor " + name in sub and len(sub) > 120, name
    assert set(COMMANDS) == set(build_parser()._subparsers._group_actions[0].choices)


@pytest.fixture
def cli_env(settings, monkeypatch):
    for key, value in settings_to_env(settings).items():
        monkeypatch.setenv(key, value)
    return settings


def test_synth_upload_ingest_split_from_the_cli(cli_env, tmp_path, capsys):
    out = tmp_path / "e1"
    assert main(["synth", str(out), "--patients", "5", "--slices", "3", "--size", "32",
                 "--bad", "uint16"]) == 0
    assert main(["upload", str(out)]) == 0
    assert main(["--json", "exports", "--new"]) == 0
    capsys.readouterr()
    assert main(["--json", "ingest", "--new"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["exports"][0]["quarantine"][0]["reason"] == "not_uint8"
    assert main(["split"]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "tumor slices" in text
    assert main(["--json", "datasets"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["patients"] == 5


def test_synth_studies_and_submit_them(cli_env, store, tmp_path, capsys):
    out = tmp_path / "studies"
    assert main(["--json", "synth", str(out), "--studies", "--patients", "2", "--slices", "3",
                 "--size", "32"]) == 0
    folders = json.loads(capsys.readouterr().out)["studies"]
    assert len(folders) == 2 and not list(out.rglob("*_mask.tif"))
    assert main(["--json", "submit", *folders]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["slices"] for r in rows] == [3, 3]
    assert sorted(store.list_dirs("incoming/")) == sorted(
        f"incoming/{r['study_id']}/" for r in rows)
    assert main(["submit", folders[0], "--study-id", "../escape"]) == 1
    assert "invalid study id" in capsys.readouterr().err


def test_batches_lists_the_newest_first(cli_env, store, capsys):
    from brain_tumor.scoring import batch
    from brain_tumor.store.scores import ScoreStore

    assert main(["batches"]) == 0
    assert "no scoring batches yet" in capsys.readouterr().out
    plan = {"model_version": "m-1", "study_ids": ["a"], "already_done": 0, "outside_window": 0,
            "deferred": 0}
    bad = {"study_id": "a", "status": "quarantined", "reason": "empty", "detail": "no slices"}
    for run_id, results in (("run-1", []), ("run-2", [bad])):
        ScoreStore(store, cli_env).write_batch(batch.summarize(plan, results, run_id, "t0", "t1"))
    assert main(["--json", "batches"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in rows] == ["run-2", "run-1"]
    assert main(["batches", "--limit", "1"]) == 0
    text = capsys.readouterr().out
    assert "run-2" in text and "run-1" not in text and "quarantined a: empty" in text


def test_failures_exit_non_zero_with_the_reason(cli_env, tmp_path, capsys):
    assert main(["ingest", "missing-export"]) == 1
    assert "export 'missing-export' not found" in capsys.readouterr().err
    assert main(["split"]) == 1
    assert "no dataset version yet" in capsys.readouterr().err
    assert main(["upload", str(tmp_path / "nope")]) == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_bad_settings_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("BRAIN_TUMOR_IMAGE_SIZE", "tiny")
    assert main(["settings"]) == 2
    assert "image_size" in capsys.readouterr().err


def _model_records(store, settings, *versions: str) -> None:
    """Bare model.json records, enough for the registry commands."""
    from brain_tumor.store.modelstore import ModelStore

    for version in versions:
        store.put_json(ModelStore(store, settings).key(version, "model.json"), {
            "model_version": version, "dataset_version": "ds-1", "image_size": 32,
            "threshold": 0.5, "threshold_rule": "youden", "backbone": "tiny",
            "keras_backend": "tensorflow", "best_epochs": {}, "created_at": "2026-01-01T00:00:00",
            "code_version": "test"})


def test_registry_commands(cli_env, capsys):
    from brain_tumor.steps import open_store

    store = open_store(cli_env)
    _model_records(store, cli_env, "m-aaa", "m-bbb")
    assert main(["registry", "promote", "m-aaa"]) == 0
    assert main(["registry", "promote", "m-bbb", "--reason", "better"]) == 0
    assert main(["registry", "rollback"]) == 0
    capsys.readouterr()
    assert main(["--json", "registry", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["champion"] == "m-aaa"
    assert [e["action"] for e in listed["events"]] == ["promoted", "promoted", "rolled_back"]
    assert main(["registry", "rollback"]) == 1  # nothing before m-aaa
    assert "no previous champion" in capsys.readouterr().err
    assert main(["registry", "show", "m-bbb"]) == 0
    assert "rolled_back" in capsys.readouterr().out


def test_registry_repair_moves_a_pointer_left_behind(cli_env, capsys):
    from brain_tumor.steps import open_store
    from brain_tumor.store.registry import Registry

    store = open_store(cli_env)
    _model_records(store, cli_env, "m-aaa", "m-bbb")
    assert main(["registry", "promote", "m-aaa"]) == 0
    registry = Registry(store, cli_env)
    behind = store.get(registry.pointer_key)  # the pointer as a crash after event 2 leaves it
    assert main(["registry", "promote", "m-bbb"]) == 0
    store.put(registry.pointer_key, behind)
    capsys.readouterr()
    assert main(["--json", "registry", "list"]) == 0  # a reader: reports, does not write
    assert json.loads(capsys.readouterr().out)["champion"] == "m-bbb"
    assert store.get(registry.pointer_key) == behind
    assert main(["--json", "registry", "repair"]) == 0
    assert json.loads(capsys.readouterr().out)["champion"] == "m-bbb"
    assert store.get_json(registry.pointer_key)["model_version"] == "m-bbb"
    with pytest.raises(SystemExit):
        main(["registry", "--help"])
    assert "repair" in capsys.readouterr().out


def test_score_command_needs_a_champion_and_scores_with_one(trained, monkeypatch, tmp_path, capsys):
    import uuid

    import numpy as np

    from brain_tumor.devtools.synth import make_slice
    from brain_tumor.ingest.imaging import encode_tiff
    from brain_tumor.steps import open_store
    from brain_tumor.store.registry import Registry

    settings, record = trained
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    scoring = settings.model_copy(update={"s3_bucket": bucket})
    for key, value in settings_to_env(scoring).items():
        monkeypatch.setenv(key, value)
    store = open_store(scoring)
    rng = np.random.default_rng(0)
    for n in range(1, 4):
        image, _ = make_slice(rng, 32, (0.5, 0.5, 0.15) if n == 2 else None)
        store.put(f"incoming/study-a/P_{n}.tif", encode_tiff(image))
    store.put("incoming/study-bad/P_1.tif", b"not a tiff")
    assert main(["studies", "seal", "--all"]) == 0
    assert main(["score"]) == 1
    assert "no champion model yet" in capsys.readouterr().err
    # the model lives in the session bucket: copy its files so this bucket can promote it
    source = open_store(settings)
    for obj in source.list(f"models/{record['model_version']}/"):
        store.put(obj.key, source.get(obj.key))
    Registry(store, scoring).promote(record["model_version"], reason="test")
    assert main(["--json", "score"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [s["study_id"] for s in result["studies"]] == ["study-a"]
    assert result["studies"][0]["slices"] == 3
    assert result["quarantined"][0]["study_id"] == "study-bad"
    assert result["quarantined"][0]["reason"] == "unreadable"
    assert main(["--json", "score", "study-a"]) == 0
    assert json.loads(capsys.readouterr().out)["studies"][0]["status"] == "skipped"
