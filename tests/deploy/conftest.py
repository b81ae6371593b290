"""Fixtures of the deployment tests: PostgreSQL and Redis on loopback (marker ``celery``).

The servers come from Debian's packages (``scripts/celery-stack.sh``, which ``scripts/test`` runs
as root; these fixtures run it too when a binary is missing and this is root). Under ``CI=true``
a missing or broken server FAILS the tests with the reason; elsewhere they are skipped only
when the binaries are missing and this user cannot install them (not root).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from deploy_services import Postgres, Redis, ServiceError, install_stack, postgres_bin, redis_bin
from support import unavailable

#: wall times (seconds) of the session's deployment steps and other figures (unit in the name),
#: printed in the terminal summary
TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "deployment figures (wall seconds unless named)")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name:40} {seconds:8.1f}")


@pytest.fixture(scope="session")
def deploy_timings() -> dict[str, float]:
    """Record a wall time here to see it in the terminal summary."""
    return TIMINGS


@pytest.fixture(scope="session")
def stack_installed() -> None:
    """PostgreSQL and Redis binaries are on this machine (installed here when root)."""
    if postgres_bin() and redis_bin():
        return
    if os.geteuid() != 0:
        unavailable("PostgreSQL or Redis is not installed and this user is not root "
                    "(sudo scripts/celery-stack.sh)")
    t = time.monotonic()
    try:
        install_stack()
    except (ServiceError, OSError) as exc:
        pytest.fail(f"installing PostgreSQL and Redis failed: {exc}", pytrace=False)
    TIMINGS["apt-get install postgresql redis"] = time.monotonic() - t
    if not (postgres_bin() and redis_bin()):
        pytest.fail(f"after scripts/celery-stack.sh: initdb/pg_ctl {postgres_bin()}, "
                    f"redis-server {redis_bin()}", pytrace=False)


@pytest.fixture(scope="session")
def postgres(stack_installed: None) -> Iterator[Postgres]:
    """A PostgreSQL cluster on 127.0.0.1 with database ``airflow`` (password auth)."""
    t = time.monotonic()
    server = Postgres(postgres_bin())
    try:
        server.start()
    except (ServiceError, OSError) as exc:
        server.stop()
        pytest.fail(f"PostgreSQL did not start: {exc}", pytrace=False)
    TIMINGS["postgres initdb + start"] = time.monotonic() - t
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(stack_installed: None) -> Iterator[Redis]:
    """A Redis server on 127.0.0.1 (password, no persistence): the Celery broker."""
    server = Redis(redis_bin())
    try:
        server.start()
    except (ServiceError, OSError) as exc:
        server.stop()
        pytest.fail(f"Redis did not start: {exc}", pytrace=False)
    yield server
    server.stop()
