"""A real Airflow deployment for tests: API server, scheduler, DAG processor (and workers) as
separate processes on loopback, with a login and a REST client.

Used by the tests that need more than ``dag.test()``: a scheduler that fires schedules, the UI
plugin behind Airflow's own login, the CeleryExecutor run. Each component's output goes to
``<home>/logs/<name>.log`` (shown when a wait fails).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests
from support import free_port

DEFAULT_COMPONENTS: tuple[tuple[str, ...], ...] = (("api-server",), ("scheduler",),
                                                   ("dag-processor",))
ADMIN = "admin"
FINISHED = {"success", "failed"}


class AirflowServices:
    """Airflow components as child processes sharing one home, database and JWT secret."""

    def __init__(self, home: Path, env: dict[str, str] | None = None,
                 components: Sequence[Sequence[str]] = DEFAULT_COMPONENTS,
                 port: int | None = None, password: str | None = None,
                 component_env: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.home = Path(home)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.password = password or secrets.token_urlsafe(12)
        self.components = [tuple(c) for c in components]
        #: more environment for single components, by name (see ``component_name``)
        self.component_env = {k: dict(v) for k, v in (component_env or {}).items()}
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_dir = self.home / "logs"
        self.env = self._environment(env or {})
        self._token: str | None = None

    def _environment(self, extra: dict[str, str]) -> dict[str, str]:
        """The process environment: the caller's settings over loopback defaults."""
        airflow_bin = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update({
            "PATH": f"{airflow_bin}:{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": os.environ.get("AIRFLOW__CORE__DAGS_FOLDER", ""),
            "AIRFLOW__CORE__PLUGINS_FOLDER": os.environ.get("AIRFLOW__CORE__PLUGINS_FOLDER", ""),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
        })
        env.update(extra)
        return env

    # -- lifecycle ---------------------------------------------------------------------------

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run one ``airflow`` CLI command in this deployment's environment (checked)."""
        return subprocess.run(["airflow", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=True)

    def start(self, timeout: float = 180) -> AirflowServices:
        """Migrate the database, start every component and wait until the API answers."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({ADMIN: self.password}))
        self.airflow("db", "migrate")
        unknown = set(self.component_env) - {component_name(c) for c in self.components}
        if unknown:
            raise ValueError(f"component_env names no component: {sorted(unknown)}")
        for component in self.components:
            name = component_name(component)
            log = open(self.log_dir / f"{name}.log", "ab")
            self.procs[name] = subprocess.Popen(
                ["airflow", *component], env={**self.env, **self.component_env.get(name, {})},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_healthy(timeout)
        return self

    def stop(self) -> None:
        """Stop every component (SIGTERM to its process group, then SIGKILL)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def __enter__(self) -> AirflowServices:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self, tail: int = 60) -> str:
        """The last lines of every component's log (for failure messages)."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"==== {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def check_running(self) -> None:
        """Raise with the logs if a component died."""
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"Airflow component(s) exited: {dead}\n{self.logs()}")

    def wait_healthy(self, timeout: float) -> None:
        """Wait until ``/api/v2/monitor/health`` answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            try:
                if requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise TimeoutError(f"API server not healthy after {timeout}s\n{self.logs()}")

    # -- REST --------------------------------------------------------------------------------

    def token(self, username: str = ADMIN, password: str | None = None) -> str:
        """A bearer token from ``POST /auth/token`` (the simple auth manager's login)."""
        resp = requests.post(f"{self.base_url}/auth/token", timeout=30,
                             json={"username": username, "password": password or self.password})
        resp.raise_for_status()
        return resp.json()["access_token"]

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A REST call to ``/api/v2/<path>`` as the admin user."""
        if self._token is None:
            self._token = self.token()
        headers = {"Authorization": f"Bearer {self._token}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.base_url}/api/v2/{path.lstrip('/')}",
                                headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)

    def api_write(self, method: str, path: str, attempts: int = 5, **kwargs: Any
                  ) -> requests.Response:
        """``api`` for a call that writes to the metadata database, retried on a server error:
        on SQLite (one writer at a time) the API server's write fails after its 5 s lock wait
        while the scheduler holds the lock — a slow machine makes that likely."""
        for attempt in range(1, attempts + 1):
            resp = self.api(method, path, **kwargs)
            if resp.status_code < 500 or attempt == attempts:
                return resp
            time.sleep(2)
        return resp

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until the DAG processor has parsed dag_id; returns the DAG's record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            resp = self.api("GET", f"dags/{dag_id}")
            if resp.ok:
                return resp.json()
            time.sleep(2)
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout}s\n{self.logs()}")

    def unpause(self, dag_id: str) -> None:
        """Unpause a DAG (it must be parsed)."""
        self.wait_for_dag(dag_id)
        self.api_write("PATCH", f"dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Trigger a run now; returns its run id."""
        self.wait_for_dag(dag_id)
        resp = self.api_write("POST", f"dags/{dag_id}/dagRuns",
                              json={"logical_date": None, "conf": conf or {}})
        resp.raise_for_status()
        return resp.json()["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        """Every run of a DAG, oldest first."""
        resp = self.api("GET", f"dags/{dag_id}/dagRuns", params={"order_by": "id", "limit": 100})
        resp.raise_for_status()
        return resp.json()["dag_runs"]

    def wait_for_run(self, dag_id: str, run_id: str | None = None, timeout: float = 300,
                     run_type: str | None = None) -> dict[str, Any]:
        """Wait for a run to finish (run_id, or else the first run of run_type); returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            for run in self.runs(dag_id):
                if run_id not in (None, run["dag_run_id"]):
                    continue
                if run_type not in (None, run["run_type"]):
                    continue
                if run["state"] in FINISHED:
                    return run
            time.sleep(2)
        raise TimeoutError(f"{dag_id} run {run_id or run_type} not finished after {timeout}s: "
                           f"{self.runs(dag_id)}\n{self.logs()}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's task instances (mapped ones included)."""
        resp = self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                        params={"limit": 1000})
        resp.raise_for_status()
        return resp.json()["task_instances"]


def component_name(component: Sequence[str]) -> str:
    """A component's name (its log file's stem): the command and its first two plain arguments.

    ``("celery", "worker", "--queues", "scoring")`` is ``celery-worker-scoring``.
    """
    return "-".join(tuple(component[:1]) + tuple(a for a in component[1:]
                                                 if not a.startswith("-"))[:2])


def airflow_available() -> bool:
    """Whether the ``airflow`` CLI is installed next to this interpreter."""
    return shutil.which("airflow", path=str(Path(sys.executable).parent)) is not None
