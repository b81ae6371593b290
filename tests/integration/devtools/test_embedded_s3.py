"""The embedded SeaweedFS server: start, stop, restart with data kept, status."""

import pytest

from brain_tumor.devtools.embedded_s3 import EmbeddedS3, EmbeddedS3Error, port_open
from brain_tumor.settings import load_settings
from brain_tumor.store.storage import ObjectStore


@pytest.mark.seaweedfs
def test_restart_keeps_data(seaweed):
    settings = load_settings(env={}, s3_endpoint_url=seaweed.endpoint, s3_bucket=seaweed.bucket,
                             s3_access_key_id=seaweed.access_key,
                             s3_secret_access_key=seaweed.secret_key)
    ObjectStore.from_settings(settings).put("keep/me.txt", b"still here")
    assert seaweed.running()
    seaweed.start()  # already running: no-op
    assert seaweed.stop()
    assert not seaweed.running() and not port_open(seaweed.host, seaweed.port)
    assert not seaweed.stop()  # stopping twice is harmless
    seaweed.start()
    assert ObjectStore.from_settings(settings).get("keep/me.txt") == b"still here"


@pytest.mark.seaweedfs
def test_port_taken_is_reported(seaweed, tmp_path):
    other = EmbeddedS3(tmp_path / "other", port=seaweed.port, port_base=seaweed.port_base + 20)
    with pytest.raises(EmbeddedS3Error, match=f"port {seaweed.port} .* is taken"):
        other.start()


def test_command_uses_configured_ports(tmp_path):
    cmd = EmbeddedS3(tmp_path, port=1234, port_base=40000).command()
    assert "-s3.port=1234" in cmd and "-master.port=40000" in cmd and "-ip.bind=127.0.0.1" in cmd
