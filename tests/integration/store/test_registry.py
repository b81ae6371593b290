"""The model registry: event log, champion stack, pointer repair, and real concurrency."""

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from brain_tumor.settings import Settings, load_settings
from brain_tumor.store.modelstore import ModelStore
from brain_tumor.store.registry import PromotionConflict, Registry, RegistryError
from brain_tumor.store.schemas import validate_record
from brain_tumor.store.storage import ObjectStore


def _publish(store: ObjectStore, settings: Settings, *versions: str) -> None:
    """Fake model versions: only a valid model.json, as ModelStore.publish writes it last."""
    models = ModelStore(store, settings)
    for version in versions:
        record = validate_record("model", {
            "model_version": version, "dataset_version": f"ds-{version}", "image_size": 32,
            "threshold": 0.5, "threshold_rule": "youden", "backbone": "tiny",
            "keras_backend": "tensorflow", "best_epochs": {"classifier": 1, "segmenter": 1},
            "created_at": "2024-01-01T00:00:00+00:00", "code_version": "test"})
        assert store.put_json(models.key(version, "model.json"), record, new=True)


def _pointer(registry: Registry) -> dict:
    return validate_record("champion", registry.store.get_json(registry.pointer_key))


@pytest.fixture
def registry(store, settings) -> Registry:
    _publish(store, settings, "m-a", "m-b", "m-c")
    return Registry(store, settings)


def test_first_then_second_promotion(registry):
    assert registry.champion() is None and registry.events() == []
    first = registry.promote("m-a", reason="first model", metrics={"roc_auc": 0.9},
                             run_id="cli")
    assert first["seq"] == 1 and first["previous_champion"] is None
    assert first["dataset_version"] == "ds-m-a"  # from model.json when not given
    second = registry.promote("m-b", reason="better", dataset_version="ds-x")
    assert (second["seq"], second["previous_champion"], second["dataset_version"]) == (
        2, "m-a", "ds-x")
    assert registry.champion() == "m-b"
    assert registry.champion_history() == ["m-a", "m-b"]
    assert _pointer(registry)["model_version"] == "m-b"
    assert _pointer(registry)["event"] == registry.event_key(2)
    assert [e["seq"] for e in registry.events()] == [1, 2]
    for event in registry.events():
        validate_record("registry_event", event)
    assert registry.event_key(2).endswith("registry/events/00000002.json")


def test_reject_leaves_champion(registry):
    registry.promote("m-a", reason="first")
    event = registry.reject("m-b", reason="sensitivity 0.42 < floor 0.80",
                            metrics={"sensitivity": 0.42}, dataset_version="ds-1", run_id="r1")
    assert (event["action"], event["previous_champion"]) == ("rejected", "m-a")
    assert registry.champion() == "m-a" and registry.champion_history() == ["m-a"]
    assert _pointer(registry)["model_version"] == "m-a"


def test_rollback_returns_to_previous(registry):
    registry.promote("m-a", reason="first")
    registry.promote("m-b", reason="second")
    registry.promote("m-c", reason="third")
    event = registry.rollback(reason="bad in production", run_id="cli")
    assert (event["action"], event["model_version"], event["previous_champion"]) == (
        "rolled_back", "m-b", "m-c")
    assert registry.champion() == "m-b" == _pointer(registry)["model_version"]
    registry.rollback(reason="again")
    assert registry.champion() == "m-a" and registry.champion_history() == ["m-a"]
    with pytest.raises(RegistryError, match=r"no previous champion to roll back to.*\['m-a'\]"):
        registry.rollback(reason="nothing left")
    show = registry.show("m-c")
    assert show["model"]["model_version"] == "m-c" and show["champion"] is False
    assert [e["action"] for e in show["events"]] == ["promoted", "rolled_back"]
    assert registry.show("m-a")["champion"] is True


def test_rollback_without_history_fails(registry):
    with pytest.raises(RegistryError, match="no previous champion to roll back to"):
        registry.rollback(reason="empty")
    registry.promote("m-a", reason="first")
    with pytest.raises(RegistryError, match="no previous champion to roll back to"):
        registry.rollback(reason="only one")


def test_unknown_and_repeated_promotions_fail(registry):
    with pytest.raises(RegistryError, match="'m-missing'.*does not exist"):
        registry.promote("m-missing", reason="typo")
    with pytest.raises(RegistryError, match="'m-missing'"):
        registry.show("m-missing")
    registry.promote("m-a", reason="first")
    with pytest.raises(RegistryError, match="'m-a' is already the champion"):
        registry.promote("m-a", reason="again")
    assert len(registry.events()) == 1


def test_expected_champion_mismatch_conflicts(registry):
    registry.promote("m-a", reason="first", expected_champion=None)
    with pytest.raises(PromotionConflict, match="decided against champion None.*now 'm-a'"):
        registry.promote("m-b", reason="gate passed vs nothing", expected_champion=None)
    registry.promote("m-b", reason="gate passed vs m-a", expected_champion="m-a")
    with pytest.raises(PromotionConflict):
        registry.rollback(reason="stale", expected_champion="m-a")
    assert registry.champion_history() == ["m-a", "m-b"]


def test_losing_the_seq_race_conflicts(registry, store, settings):
    """A writer that read the log before another writer's event loses at put_new."""
    registry.promote("m-a", reason="first")
    other = Registry(store, settings)
    real_events = registry.events
    registry.events = lambda: real_events()[:1]  # this writer's stale read of the log
    other.promote("m-b", reason="the other writer wins seq 2")
    with pytest.raises(PromotionConflict, match="seq 2 was taken by another writer"):
        registry.promote("m-c", reason="decided against m-a")
    registry.events = real_events
    assert registry.champion_history() == ["m-a", "m-b"]


def _crash_after_event(registry: Registry) -> None:
    """m-a promoted, then a crash between event 2 (promote m-b) and the pointer move."""
    registry.promote("m-a", reason="first")
    crashed = {"seq": 2, "action": "promoted", "model_version": "m-b", "previous_champion": "m-a",
               "dataset_version": None, "reason": "crashed", "metrics": None, "run_id": None,
               "at": "2024-01-01T00:00:00+00:00"}
    assert registry.store.put_json(registry.event_key(2), crashed, new=True)
    assert _pointer(registry)["model_version"] == "m-a"


def _forbid_writes(monkeypatch: pytest.MonkeyPatch, store: ObjectStore) -> None:
    """Fail the test on any write to the store (every write method, on this instance)."""
    def write(*args: object, **kwargs: object) -> None:
        pytest.fail(f"a reader wrote to the store: {args!r}")

    for name in ("put", "put_new", "put_json", "put_parquet", "copy", "upload_file", "delete"):
        monkeypatch.setattr(store, name, write)


def test_champion_reports_a_stale_pointer_without_writing(registry, monkeypatch, caplog):
    _crash_after_event(registry)
    with monkeypatch.context() as m, caplog.at_level(logging.WARNING,
                                                     logger="brain_tumor.store.registry"):
        _forbid_writes(m, registry.store)
        assert registry.champion() == "m-b"
        assert "champion pointer says m-a, the event log says m-b" in caplog.text
        assert "brain-tumor registry repair" in caplog.text
    assert _pointer(registry)["model_version"] == "m-a"  # left as it was
    registry.store.delete(registry.pointer_key)
    registry.store.put(registry.pointer_key, b"{not json")
    with monkeypatch.context() as m:
        _forbid_writes(m, registry.store)
        assert registry.champion() == "m-b"  # corrupt pointer: the log still answers
    assert registry.store.get(registry.pointer_key) == b"{not json"


def test_repair_moves_a_stale_missing_or_corrupt_pointer(registry, monkeypatch, caplog):
    _crash_after_event(registry)
    with caplog.at_level(logging.WARNING, logger="brain_tumor.store.registry"):
        assert registry.repair() == "m-b"
    assert "champion pointer says m-a" in caplog.text
    pointer = _pointer(registry)
    assert (pointer["model_version"], pointer["event"]) == ("m-b", registry.event_key(2))
    registry.store.delete(registry.pointer_key)  # missing pointer: recreated
    assert registry.repair() == "m-b" == _pointer(registry)["model_version"]
    registry.store.put(registry.pointer_key, b"{not json")  # corrupt pointer: rewritten
    assert registry.repair() == "m-b" == _pointer(registry)["model_version"]
    caplog.clear()
    with monkeypatch.context() as m, caplog.at_level(logging.WARNING,
                                                     logger="brain_tumor.store.registry"):
        _forbid_writes(m, registry.store)  # in agreement: no write, no warning
        assert registry.repair() == "m-b" and registry.champion() == "m-b"
    assert caplog.text == ""


def test_a_rejection_repairs_a_stale_pointer(registry):
    _crash_after_event(registry)
    registry.reject("m-c", reason="worse")
    assert _pointer(registry)["model_version"] == "m-b"
    assert _pointer(registry)["event"] == registry.event_key(2)


def test_pointer_without_a_champion_is_ignored(registry, monkeypatch, caplog):
    registry.store.put(registry.pointer_key, json.dumps({
        "model_version": "m-a", "event": registry.event_key(1),
        "updated_at": "2024-01-01T00:00:00+00:00"}).encode())
    with monkeypatch.context() as m, caplog.at_level(logging.WARNING,
                                                     logger="brain_tumor.store.registry"):
        _forbid_writes(m, registry.store)
        assert registry.champion() is None and registry.repair() is None
    assert "the event log no champion" in caplog.text


def _race_round(store: ObjectStore, settings: Settings, versions: list[str],
                expected: str | None) -> tuple[list[str], list[str], list[BaseException]]:
    """Every version's writer promotes at once against `expected`: (won, lost, errors)."""
    barrier = threading.Barrier(len(versions))
    won: list[str] = []
    lost: list[str] = []
    errors: list[BaseException] = []

    def race(version: str) -> None:
        registry = Registry(store, settings)  # one registry per writer, as in separate tasks
        barrier.wait()
        try:
            registry.promote(version, reason="race", expected_champion=expected)
            won.append(version)
        except PromotionConflict:
            lost.append(version)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=race, args=(v,)) for v in versions]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    return won, lost, errors


@pytest.mark.seaweedfs
def test_concurrent_promotions_on_seaweedfs(seaweed):
    """6 writers race each of 15 rounds; exactly one wins, the others get PromotionConflict."""
    settings = load_settings(env={}, s3_endpoint_url=seaweed.endpoint, s3_bucket=seaweed.bucket,
                             s3_access_key_id=seaweed.access_key,
                             s3_secret_access_key=seaweed.secret_key,
                             s3_root=f"registry-race-{uuid.uuid4().hex[:8]}/")
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    writers, rounds = 6, 15
    names = [[f"m-r{r:02d}-t{t}" for t in range(writers)] for r in range(rounds)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda v: _publish(store, settings, v), [v for row in names for v in row]))
    started = time.monotonic()
    winners: list[str] = []
    for r in range(rounds):
        won, lost, errors = _race_round(store, settings, names[r], winners[-1] if winners else None)
        assert not errors, errors
        assert len(won) == 1 and sorted(lost) == sorted(set(names[r]) - set(won)), (r, won, lost)
        winners.extend(won)
    reader = Registry(store, settings)
    events = reader.events()
    assert [e["seq"] for e in events] == list(range(1, rounds + 1))
    assert [e["model_version"] for e in events] == winners
    assert [e["previous_champion"] for e in events] == [None, *winners[:-1]]
    assert all(e["action"] == "promoted" for e in events)
    assert _pointer(reader)["model_version"] == winners[-1]
    assert _pointer(reader)["event"] == reader.event_key(rounds)
    assert reader.champion() == winners[-1] and reader.champion_history() == winners
    assert time.monotonic() - started < 20
