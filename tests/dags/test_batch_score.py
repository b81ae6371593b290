"""The batch scoring DAG end to end with ``dag.test()``: SQLite Airflow, moto S3, the session model.

Each test gets a fresh bucket holding a copy of the session's tiny model (promoted champion) and
synthetic studies under ``incoming/``, runs the DAG in this process and checks the task states
and what the run left in S3. (That the schedule really fires is checked with a running
scheduler in ``test_batch_score_scheduler.py``.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import copy_model

from brain_tumor.devtools.synth import SynthSpec, make_studies
from brain_tumor.scoring.readers import upload_study
from brain_tumor.settings import Settings, settings_to_env
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.registry import Registry
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore

DAG_ID = "batch_score"
STUDIES = SynthSpec(patients=3, slices=5, size=32, seed=21, tumor_free_patients=1)
BAD = SynthSpec(patients=1, slices=3, size=32, seed=22, first_patient=10, bad=("corrupt",))


@pytest.fixture(scope="module")
def study_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Synthetic studies: three good ones (one tumor-free) and one with a corrupt slice."""
    root = tmp_path_factory.mktemp("studies")
    return {"good": make_studies(root / "good", STUDIES), "bad": make_studies(root / "bad", BAD)}


@pytest.fixture
def scoring(trained, make_settings: Callable[..., Settings],
            monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, ObjectStore]:
    """A fresh bucket with the session model promoted, its settings in the environment."""
    settings = make_settings(batch_size=16, io_workers=4)
    source, record = trained
    copy_model(source, record["model_version"], settings)
    store = ObjectStore.from_settings(settings)
    Registry(store, settings).promote(record["model_version"], reason="test champion")
    for name, value in settings_to_env(settings).items():
        monkeypatch.setenv(name, value)
    return settings, store


def submit(store: ObjectStore, settings: Settings, folders: list[Path]) -> list[str]:
    """Upload study folders to incoming/; returns their ids."""
    return [upload_study(IncomingStore(store, settings), folder)[0] for folder in folders]


def run_dag(dag: Any) -> tuple[Any, str, dict[str, list[str]]]:
    """Run the DAG once in this process; the DagRun, its state and each task's states."""
    dag_run = dag.test()
    states: dict[str, list[str]] = {}
    for ti in sorted(dag_run.get_task_instances(), key=lambda t: (t.task_id, t.map_index)):
        states.setdefault(ti.task_id, []).append(str(ti.state))
    return dag_run, str(dag_run.state), states


def summary_of(store: ObjectStore, settings: Settings, dag_run: Any) -> dict[str, Any]:
    """The batch summary the run stored."""
    return ScoreStore(store, settings).batch(dag_run.run_id)


def output(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> str:
    """Everything the run logged (task logs go to the process output under dag.test())."""
    out, err = capfd.readouterr()
    return caplog.text + out + err


def listing(store: ObjectStore, prefix: str) -> dict[str, str]:
    return {o.key: o.etag for o in store.list(prefix)}


def test_dag_shape(get_dag: Callable[[str], Any]) -> None:
    from airflow.sdk import AssetOrTimeSchedule

    dag = get_dag(DAG_ID)
    assert sorted(dag.task_ids) == ["plan", "score", "summarize"]
    scorer = dag.get_task("score")
    assert type(scorer).__name__.endswith("MappedOperator")
    assert scorer.queue == "scoring" and scorer.max_active_tis_per_dagrun == 2
    assert dag.get_task("summarize").trigger_rule == "all_done"
    assert dag.get_task("plan").downstream_task_ids == {"score", "summarize"}
    assert dag.get_task("score").downstream_task_ids == {"summarize"}
    assert type(dag.timetable).__name__ == AssetOrTimeSchedule.__name__  # core's twin class
    assert "brain_tumor_champion" in str(dag.timetable.asset_condition)
    assert dag.timetable.timetable.expression == "*/10 * * * *"
    assert dag.max_active_runs == 1
    assert dag.default_args["retries"] == 2


def test_scores_good_studies_quarantines_a_bad_one_and_reruns_do_no_work(
        get_dag: Callable[[str], Any], scoring, study_folders,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings, store = scoring
    good = submit(store, settings, study_folders["good"])
    bad = submit(store, settings, study_folders["bad"])
    champion = Registry(store, settings).champion()
    monkeypatch.setenv("BRAIN_TUMOR_SCORING_MAX_STUDIES_PER_RUN", "3")  # 4 due: one waits
    monkeypatch.setenv("BRAIN_TUMOR_SCORING_CHUNK_SIZE", "2")  # 3 planned: chunks of 2 and 1

    dag_run, state, tasks = run_dag(get_dag(DAG_ID))

    assert state == "success", tasks
    assert tasks == {"plan": ["success"], "score": ["success"] * 2, "summarize": ["success"]}
    first = summary_of(store, settings, dag_run)
    assert (first["studies_planned"], first["studies_deferred"]) == (3, 1)
    assert first["model_version"] == champion and first["trigger"] == "manual"

    dag_run, state, tasks = run_dag(get_dag(DAG_ID))  # works off the deferred study

    assert state == "success", tasks
    assert tasks["score"] == ["success"]
    second = summary_of(store, settings, dag_run)
    assert (second["studies_planned"], second["studies_deferred"]) == (1, 0)
    both = [first, second]
    assert sum(s["studies_scored"] for s in both) == 3
    assert sum(s["studies_quarantined"] for s in both) == 1
    assert [q["study_id"] for s in both for q in s["quarantined"]] == bad
    assert sum(s["tumors_found"] for s in both) == 2  # one good study is tumor-free
    for sid in good:
        result = ScoreStore(store, settings).result(champion, sid)
        assert result is not None and result["model_version"] == champion
    record = store.get_json(ScoreStore(store, settings).quarantine_key(champion, bad[0]))
    assert record["reason"] == "unreadable" and record["files"] == [
        f"incoming/{bad[0]}/{bad[0]}_4.tif"]
    assert not ScoreStore(store, settings).is_done(champion, bad[0])
    before = listing(store, f"scores/{champion}/")

    dag_run, state, tasks = run_dag(get_dag(DAG_ID))  # nothing left to do

    assert state == "success", tasks
    assert tasks == {"plan": ["success"], "score": ["skipped"], "summarize": ["success"]}
    third = summary_of(store, settings, dag_run)
    assert (third["studies_planned"], third["studies_scored"], third["studies_skipped"]) == \
        (0, 0, 3)
    assert listing(store, f"scores/{champion}/") == before  # no duplicate work


def test_champion_change_rescores_recent_studies_with_the_new_model(
        get_dag: Callable[[str], Any], scoring, study_folders, trained,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings, store = scoring
    good = submit(store, settings, study_folders["good"][:2])
    old = Registry(store, settings).champion()
    _, state, _ = run_dag(get_dag(DAG_ID))
    assert state == "success"
    new = copy_model(trained[0], trained[1]["model_version"], settings, as_version="m-secondmodel")
    Registry(store, settings).promote(new, reason="test: a new champion")

    monkeypatch.setenv("BRAIN_TUMOR_RESCORE_WINDOW_DAYS", "0")  # every study is older
    late = submit(store, settings, study_folders["good"][2:])  # never scored by anyone
    dag_run, state, _ = run_dag(get_dag(DAG_ID))

    assert state == "success"
    summary = summary_of(store, settings, dag_run)
    assert summary["model_version"] == new
    assert (summary["studies_scored"], summary["studies_outside_window"]) == (1, 2)
    assert ScoreStore(store, settings).is_done(new, late[0])
    assert not any(ScoreStore(store, settings).is_done(new, sid) for sid in good)

    monkeypatch.setenv("BRAIN_TUMOR_RESCORE_WINDOW_DAYS", "7")  # they arrived minutes ago
    dag_run, state, _ = run_dag(get_dag(DAG_ID))

    assert state == "success"
    assert summary_of(store, settings, dag_run)["studies_scored"] == 2
    for sid in good:
        assert ScoreStore(store, settings).result(new, sid)["model_version"] == new
        assert ScoreStore(store, settings).result(old, sid)["model_version"] == old  # kept


def test_a_failed_study_fails_the_run_after_the_others_are_scored(
        get_dag: Callable[[str], Any], scoring, study_folders,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from brain_tumor.scoring.study import ScoringPipeline
    from brain_tumor.store.storage import StorageError

    settings, store = scoring
    ids = submit(store, settings, study_folders["good"][:2])
    champion = Registry(store, settings).champion()
    real = ScoringPipeline._write  # a study's outputs, summary and done marker

    def flaky(pipeline, scored):
        study_id = scored.study.study_id
        if study_id == ids[0]:
            raise StorageError(f"simulated outage while writing scores/{champion}/{study_id}")
        return real(pipeline, scored)

    monkeypatch.setattr(ScoringPipeline, "_write", flaky)  # both studies share one chunk

    dag_run, state, tasks = run_dag(get_dag(DAG_ID))

    assert state == "failed"
    assert tasks["score"] == ["failed"] and tasks["summarize"] == ["failed"]
    summary = summary_of(store, settings, dag_run)  # written before the run was failed
    assert summary["failed"] == [ids[0]] and summary["studies_scored"] == 1
    assert ScoreStore(store, settings).is_done(champion, ids[1])  # the good result is kept
    assert not ScoreStore(store, settings).is_done(champion, ids[0])

    monkeypatch.setattr(ScoringPipeline, "_write", real)  # the outage is over: the next run
    dag_run, state, _ = run_dag(get_dag(DAG_ID))

    assert state == "success"
    assert summary_of(store, settings, dag_run)["studies_scored"] == 1
    assert ScoreStore(store, settings).is_done(champion, ids[0])


def test_no_champion_fails_the_run_and_says_so(
        get_dag: Callable[[str], Any], make_settings: Callable[..., Settings],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    settings = make_settings()
    ObjectStore.from_settings(settings).ensure_bucket()
    for name, value in settings_to_env(settings).items():
        monkeypatch.setenv(name, value)

    with caplog.at_level(logging.INFO):
        _, state, tasks = run_dag(get_dag(DAG_ID))

    assert state == "failed"
    assert tasks == {"plan": ["failed"], "score": ["upstream_failed"], "summarize": ["failed"]}
    assert "AirflowFailException: no champion model yet" in output(caplog, capfd)


def test_unreachable_storage_fails_with_the_endpoint_in_the_message(
        get_dag: Callable[[str], Any], make_settings: Callable[..., Settings],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    from support import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(s3_endpoint_url=endpoint, s3_max_attempts=1)
    for name, value in settings_to_env(settings).items():
        monkeypatch.setenv(name, value)

    with caplog.at_level(logging.INFO):
        _, state, tasks = run_dag(get_dag(DAG_ID))

    assert state == "failed" and tasks["plan"] == ["failed"]
    text = output(caplog, capfd)
    assert "StorageError" in text and endpoint in text
