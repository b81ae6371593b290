"""A throw-away Orthanc PACS with its DICOMweb plugin, on loopback (tests, demos).

``Orthanc`` writes a configuration into a temp folder (HTTP on a free 127.0.0.1 port, the DICOM
server off, storage and index in the folder, the DICOMweb plugin under ``/dicom-web/``, one user
with a password), starts the server, waits for ``/system`` to answer, and stops it on exit. The
binary and the plugin come from ``scripts/orthanc.sh`` (Debian's ``orthanc`` and
``orthanc-dicomweb``), whose two output lines ``Orthanc.install`` reads.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import requests

log = logging.getLogger(__name__)

#: the script that installs Orthanc and prints the binary's and the plugin's paths
INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "orthanc.sh"
DICOMWEB_ROOT = "/dicom-web/"


class OrthancError(RuntimeError):
    """Orthanc could not be installed or started."""


def install(script: Path = INSTALL_SCRIPT, timeout: float = 600) -> tuple[Path, Path]:
    """(Orthanc binary, DICOMweb plugin) from ``scripts/orthanc.sh`` (installs them as root)."""
    try:
        proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OrthancError(f"{script} could not run: {exc}") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or len(lines) < 2:
        raise OrthancError(f"{script} failed (rc {proc.returncode}): {proc.stderr[-1500:]}")
    return Path(lines[-2]), Path(lines[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    """A running Orthanc (context manager): its URLs and its user's credentials."""

    def __init__(self, binary: Path, plugin: Path, workdir: Path | None = None,
                 username: str = "brain-tumor", start_timeout: float = 60) -> None:
        self.binary, self.plugin = Path(binary), Path(plugin)
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="orthanc-"))
        self.username = username
        self.password = secrets.token_urlsafe(12)
        self.port = _free_port()
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def installed(cls, workdir: Path | None = None) -> Orthanc:
        """An Orthanc of the binary and plugin ``scripts/orthanc.sh`` installs (not started)."""
        binary, plugin = install()
        return cls(binary, plugin, workdir)

    @property
    def url(self) -> str:
        """The server's REST root."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS, STOW-RS)."""
        return self.url + DICOMWEB_ROOT.rstrip("/")

    @property
    def auth(self) -> tuple[str, str]:
        """(user, password) of HTTP basic authentication."""
        return self.username, self.password

    def config(self) -> dict[str, object]:
        """The server's configuration."""
        storage = self.workdir / "db"
        return {
            "Name": "brain-tumor-test",
            "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpServerEnabled": True, "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "DicomServerEnabled": False,
            "Plugins": [str(self.plugin)],
            "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT, "EnableWado": False},
            "ConcurrentJobs": 1, "HttpThreadsCount": 8,
        }

    def start(self) -> Orthanc:
        """Write the configuration, start the server, wait until ``/system`` answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        logfile = self.workdir / "orthanc.log"
        with logfile.open("wb") as out:
            self._proc = subprocess.Popen([str(self.binary), "--no-jobs", str(config)],
                                          stdout=out, stderr=subprocess.STDOUT,
                                          cwd=self.workdir)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise OrthancError(f"Orthanc exited with {self._proc.returncode}: "
                                   f"{self.log()[-2000:]}")
            try:
                if requests.get(self.url + "/system", auth=self.auth, timeout=2).ok:
                    log.info("Orthanc up at %s (DICOMweb %s)", self.url, self.dicomweb_url)
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise OrthancError(f"Orthanc did not answer within {self.start_timeout}s: "
                           f"{self.log()[-2000:]}")

    def log(self) -> str:
        """What the server wrote to its log so far."""
        path = self.workdir / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the server (and remove its folder when it made it)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
