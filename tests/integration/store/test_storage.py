"""Storage round trips on real S3 servers on loopback: moto's, and SeaweedFS (the default)."""

import threading
import uuid

import pandas as pd
import pytest

from brain_tumor.settings import load_settings
from brain_tumor.store.storage import KeyNotFound, ObjectStore, PreconditionFailed, StorageError


def _round_trip(store: ObjectStore) -> None:
    root = f"rt-{uuid.uuid4().hex[:8]}/"
    assert store.put_new(root + "a/one.bin", b"\x00\x01")
    assert not store.put_new(root + "a/one.bin", b"other")  # written once, never replaced
    assert store.get(root + "a/one.bin") == b"\x00\x01"
    assert store.exists(root + "a/one.bin") and not store.exists(root + "a/missing")
    store.copy(root + "a/one.bin", root + "b/copy.bin")
    assert store.get(root + "b/copy.bin") == b"\x00\x01"
    store.put_json(root + "a/x.json", {"k": [1, 2]})
    assert store.get_json(root + "a/x.json") == {"k": [1, 2]}
    df = pd.DataFrame({"p": ["x", "y"], "n": [1, 2]})
    store.put_parquet(root + "a/t.parquet", df)
    pd.testing.assert_frame_equal(store.get_parquet(root + "a/t.parquet"), df, check_dtype=False)
    assert [o.key[len(root):] for o in store.list(root + "a/")] == [
        "a/one.bin", "a/t.parquet", "a/x.json"]
    assert store.list_dirs(root) == [root + "a/", root + "b/"]
    with pytest.raises(KeyNotFound, match="a/missing does not exist"):
        store.get(root + "a/missing")
    etag = store.put(root + "ptr.json", b"v1")
    store.put(root + "ptr.json", b"v2", if_match=etag)
    with pytest.raises(PreconditionFailed):
        store.put(root + "ptr.json", b"v3", if_match=etag)  # stale etag loses
    assert store.get(root + "ptr.json") == b"v2"


def test_round_trip_moto(store):
    _round_trip(store)


@pytest.mark.seaweedfs
def test_round_trip_seaweedfs(seaweed):
    settings = load_settings(env={}, s3_endpoint_url=seaweed.endpoint, s3_bucket=seaweed.bucket,
                             s3_access_key_id=seaweed.access_key,
                             s3_secret_access_key=seaweed.secret_key)
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    _round_trip(store)


@pytest.mark.seaweedfs
def test_seaweedfs_checks_credentials(seaweed):
    settings = load_settings(env={}, s3_endpoint_url=seaweed.endpoint, s3_bucket=seaweed.bucket,
                             s3_access_key_id=seaweed.access_key, s3_secret_access_key="wrong",
                             s3_max_attempts=1)
    with pytest.raises(StorageError, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKey"):
        list(ObjectStore.from_settings(settings).list(""))


@pytest.mark.seaweedfs
def test_seaweedfs_write_once_under_concurrency(seaweed):
    settings = load_settings(env={}, s3_endpoint_url=seaweed.endpoint, s3_bucket=seaweed.bucket,
                             s3_access_key_id=seaweed.access_key,
                             s3_secret_access_key=seaweed.secret_key)
    store = ObjectStore.from_settings(settings)
    wins: list[int] = []
    barrier = threading.Barrier(6)

    def writer(i: int) -> None:
        barrier.wait()
        if store.put_new("race/key", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get("race/key") == str(wins[0]).encode()


def test_unreachable_s3_gives_a_clear_error(make_settings):
    settings = make_settings(s3_endpoint_url="http://127.0.0.1:9", s3_max_attempts=1,
                             s3_connect_timeout_s=0.5)
    with pytest.raises(StorageError, match="cannot reach S3 at http://127.0.0.1:9"):
        ObjectStore.from_settings(settings).get("x")
