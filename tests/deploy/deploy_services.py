"""PostgreSQL and Redis servers for tests: Debian's binaries, a temp dir, loopback, free ports.

``scripts/celery-stack.sh`` installs them (as root). PostgreSQL refuses to run as root, so when
the tests run as root the cluster belongs to the ``postgres`` user (made by Debian's package) and
its commands run through ``runuser``. Both servers listen on 127.0.0.1 only and ask for a
password, as they would on a network.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from support import free_port

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO / "scripts" / "celery-stack.sh"


class ServiceError(RuntimeError):
    """A server could not be found, started or reached; the message says which and why."""


def postgres_bin() -> Path | None:
    """The newest PostgreSQL bin dir with initdb and pg_ctl (Debian's layout, then PATH)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                        reverse=True)
    for path in candidates:
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def redis_bin() -> Path | None:
    """The redis-server executable, if installed."""
    found = shutil.which("redis-server")
    return Path(found) if found else None


def install_stack(timeout: float = 900) -> None:
    """Run scripts/celery-stack.sh (apt-get install postgresql redis-server, as root)."""
    proc = subprocess.run([str(STACK_SCRIPT)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ServiceError(f"{STACK_SCRIPT.name} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log at {path}: {exc})"


class Postgres:
    """A throw-away PostgreSQL cluster with one database and one password user."""

    def __init__(self, bin_dir: Path, user: str = "airflow", database: str = "airflow") -> None:
        self.bin_dir = Path(bin_dir)
        self.user, self.database = user, database
        self.password = secrets.token_urlsafe(16)
        self.port = free_port()
        self.root: Path | None = None
        self._owner = "postgres" if os.geteuid() == 0 else None

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "not started"
        return self.root / "data"

    def url(self, driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL of the database (``db+`` in front for Celery's result backend)."""
        return (f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/"
                f"{self.database}")

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._owner:
            cmd = ["runuser", "-u", self._owner, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise ServiceError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n"
                               f"server log:\n{_tail(self.root / 'postgres.log')}")

    def start(self) -> Postgres:
        """initdb, start on 127.0.0.1:<port>, create the database; returns self."""
        # not under pytest's tmp dirs: they are 0700 root, which the postgres user cannot enter
        self.root = Path(tempfile.mkdtemp(prefix="bt-postgres-"))
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._owner:
            try:
                entry = pwd.getpwnam(self._owner)
            except KeyError as exc:
                raise ServiceError(f"running as root needs the {self._owner!r} user "
                                   "(Debian's postgresql package makes it)") from exc
            for path in (self.root, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data_dir), "-U", self.user, f"--pwfile={pwfile}",
                  "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8",
                  "--locale=C.UTF-8")
        pwfile.unlink()
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "postgres.log"),
                  "-o", options, "-w", "-t", "60", "start")
        self._create_database()
        log.info("postgres on 127.0.0.1:%d (%s)", self.port, self.root)
        return self

    def _create_database(self) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user,
                                password=self.password, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            conn.close()

    def connections(self) -> int:
        """Open client connections to the database right now (pg_stat_activity)."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user,
                                password=self.password, dbname=self.database)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                            (self.database,))
                return int(cur.fetchone()[0])
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop the server and remove its files."""
        if self.root is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


class Redis:
    """A throw-away Redis server (no persistence) with a password."""

    def __init__(self, binary: Path) -> None:
        self.binary = Path(binary)
        self.password = secrets.token_urlsafe(16)
        self.port = free_port()
        self.root: Path | None = None
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        """Broker URL of database ``db``."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 30) -> Redis:
        """Start on 127.0.0.1:<port> and wait until it answers PING; returns self."""
        import redis

        self.root = Path(tempfile.mkdtemp(prefix="bt-redis-"))
        log_file = open(self.root / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.root),
             "--requirepass", self.password, "--daemonize", "no"],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        log_file.close()
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServiceError(f"redis-server exited ({self.proc.returncode}):\n"
                                   f"{_tail(self.root / 'redis.log')}")
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"redis-server on port {self.port} did not answer within "
                                   f"{timeout}s:\n{_tail(self.root / 'redis.log')}")
            time.sleep(0.2)
        client.close()
        log.info("redis on 127.0.0.1:%d", self.port)
        return self

    def stop(self) -> None:
        """Stop the server and remove its files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
