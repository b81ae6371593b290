"""The trainer image, built once per session from the working tree (tests marked ``docker``).

The session fixture ``trainer_image`` makes sure of a Docker engine (scripts/docker-engine.sh) and
builds the CPU variant (docker/build-trainer.sh --variant cpu; the base image is cached by its
requirement hash, so only the first build on a machine takes minutes). ``BT_TRAINER_IMAGE=<tag>``
uses an image built beforehand instead. ``cpu_base_image`` is that base alone (Debian bookworm).

Under ``CI=true`` a missing engine or a failed build FAILS the tests; elsewhere the tests are
skipped only when no engine answers and this user cannot start one (not root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import unavailable

REPO = Path(__file__).resolve().parents[2]

#: wall times of the session's Docker steps, printed in the terminal summary
TIMINGS: dict[str, float] = {}

ENGINE_TIMEOUT_S = 900    # may apt-get install docker.io on a bare CI machine
BUILD_TIMEOUT_S = 3600    # a cold base image (debootstrap + wheels) takes minutes


def pytest_configure(config: pytest.Config) -> None:
    # harmless if pyproject.toml registers it too
    config.addinivalue_line("markers", "docker: needs a Docker engine and builds the trainer image")


def pytest_terminal_summary(terminalreporter) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "docker timings (wall seconds)")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name:28} {seconds:8.1f}")


def _engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


def _run_script(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} ran past {timeout}s:\n{(exc.stderr or '')[-3000:]}",
                    pytrace=False)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A Docker engine answers (started by scripts/docker-engine.sh where this user may)."""
    t = time.monotonic()
    if not _engine_answers():
        if os.geteuid() != 0:
            unavailable("no Docker engine answers and this user is not root "
                         "(start one: sudo scripts/docker-engine.sh)")
        proc = _run_script([str(REPO / "scripts" / "docker-engine.sh")], ENGINE_TIMEOUT_S)
        if proc.returncode != 0 or not _engine_answers():
            pytest.fail(f"scripts/docker-engine.sh failed (rc {proc.returncode}):\n"
                        f"{proc.stderr[-3000:]}", pytrace=False)
    TIMINGS["engine ready"] = time.monotonic() - t


@pytest.fixture(scope="session")
def trainer_image(docker_engine: None) -> str:
    """Tag of the CPU trainer image built from the working tree (once per session)."""
    prebuilt = os.environ.get("BT_TRAINER_IMAGE")
    if prebuilt:
        proc = subprocess.run(["docker", "image", "inspect", prebuilt], capture_output=True)
        if proc.returncode != 0:
            pytest.fail(f"BT_TRAINER_IMAGE={prebuilt} is not an image on this engine",
                        pytrace=False)
        return prebuilt
    t = time.monotonic()
    proc = _run_script([str(REPO / "docker" / "build-trainer.sh"), "--variant", "cpu"],
                       BUILD_TIMEOUT_S)
    TIMINGS["trainer image build"] = time.monotonic() - t
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        # a broken build is a bug wherever it happens, not a reason to skip
        pytest.fail(f"docker/build-trainer.sh failed (rc {proc.returncode}):\n"
                    f"{proc.stderr[-5000:]}", pytrace=False)
    return lines[-1]


@pytest.fixture(scope="session")
def cpu_base_image(docker_engine: None) -> str:
    """Tag of the CPU trainer's Debian base image (docker/build-cpu-base.sh, cached by its hash)."""
    t = time.monotonic()
    proc = _run_script([str(REPO / "docker" / "build-cpu-base.sh")], BUILD_TIMEOUT_S)
    TIMINGS["base image"] = time.monotonic() - t
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        pytest.fail(f"docker/build-cpu-base.sh failed (rc {proc.returncode}):\n"
                    f"{proc.stderr[-5000:]}", pytrace=False)
    return lines[-1]


@pytest.fixture(scope="session")
def docker_timings() -> dict[str, float]:
    """Record a wall time here to see it in the terminal summary."""
    return TIMINGS


@pytest.fixture(scope="session")
def docker_client(docker_engine: None) -> Iterator:
    """The Docker SDK client (the same library Airflow's DockerOperator uses)."""
    import docker

    client = docker.from_env(timeout=120)
    yield client
    client.close()
